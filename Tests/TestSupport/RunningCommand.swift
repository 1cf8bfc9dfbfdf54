import Foundation
import Locking

/// A long-running command (`secretsfs watch`, `secretsfs run --watch`) whose output lines are collected as they come;
/// stopped by PID (SIGKILL) in `stop()`, which teardown calls.
public final class RunningCommand: @unchecked Sendable {
    public let process = Process()
    let stdoutLines = Locked<[String]>([])
    let stderrLines = Locked<[String]>([])
    let ended = DispatchGroup()

    public init(_ arguments: [String], environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        ended.enter()
        readLines(out.fileHandleForReading, line: { [self] line in stdoutLines.withLock { $0.append(line) } }, ended: { [self] in ended.leave() })
        ended.enter()
        readLines(err.fileHandleForReading, line: { [self] line in stderrLines.withLock { $0.append(line) } }, ended: { [self] in ended.leave() })
    }

    public var stdout: [String] { stdoutLines.withLock { $0 } }
    public var stderr: [String] { stderrLines.withLock { $0 } }

    /// Waits until some stderr line contains `text` (`count` such lines), failing after `seconds`.
    public func waitForStderr(_ text: String, count: Int = 1, seconds: Double = 20) throws {
        try waitUntil("'\(text)' on stderr (\(stderr.suffix(5)))", seconds: seconds, every: 0.01) {
            stderr.count { $0.contains(text) } >= count
        }
    }

    /// Waits until `count` stdout lines have come, failing after `seconds`.
    public func waitForStdout(lines count: Int, seconds: Double = 20) throws {
        try waitUntil("\(count) stdout lines (\(stdout.count) so far)", seconds: seconds, every: 0.01) { stdout.count >= count }
    }

    public func signal(_ signal: Int32) { if process.isRunning { kill(process.processIdentifier, signal) } }

    /// Its exit status once it exits (nil: still running after `seconds`).
    public func waitForExit(seconds: Double = 20) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { return nil }
        _ = ended.wait(timeout: .now() + 5)
        return process.terminationStatus
    }

    /// The PIDs of a process's children (and theirs), from /proc.
    public static func descendants(of pid: pid_t) -> [pid_t] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let children = tasks.flatMap { task -> [pid_t] in
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
            return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return children + children.flatMap { descendants(of: $0) }
    }

    /// Kills it and everything it started (a command `run --watch` runs would outlive it otherwise).
    public func stop() {
        guard process.isRunning else { return }
        let started = Self.descendants(of: process.processIdentifier)
        kill(process.processIdentifier, SIGKILL)
        for pid in started { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }
}
