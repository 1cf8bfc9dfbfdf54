import Foundation

/// The result of a finished subprocess.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: String
    public var timedOut: Bool

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

public enum TestFailure: Error, CustomStringConvertible {
    case message(String)
    public var description: String {
        switch self {
        case .message(let text): return text
        }
    }
}

/// Runs a program to completion with a hard timeout (then SIGKILL). Standard input is `input`, or /dev/null.
@discardableResult
public func run(
    _ arguments: [String], input: [UInt8]? = nil, environment: [String: String]? = nil, timeout: Double = 30,
    directory: String? = nil
) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let stdoutPipe = Pipe()
    let stderrPipe = Pipe()
    let stdinPipe = Pipe()
    process.standardOutput = stdoutPipe
    process.standardError = stderrPipe
    process.standardInput = input == nil ? FileHandle.nullDevice : stdinPipe
    try process.run()
    let collector = OutputCollector(stdoutPipe.fileHandleForReading, stderrPipe.fileHandleForReading)
    if let input {
        stdinPipe.fileHandleForWriting.write(Data(input))
        try? stdinPipe.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(timeout)
    var timedOut = false
    while process.isRunning {
        if Date() > deadline {
            timedOut = true
            kill(process.processIdentifier, SIGKILL)
            break
        }
        usleep(2000)
    }
    process.waitUntilExit()
    let (out, err) = collector.finish()
    return ProcessResult(
        status: process.terminationStatus, stdout: out, stderr: String(decoding: err, as: UTF8.self),
        timedOut: timedOut)
}

/// Reads both pipes on background threads so a chatty child never blocks on a full pipe.
final class OutputCollector: @unchecked Sendable {
    private let group = DispatchGroup()
    private var out = Data()
    private var err = Data()

    init(_ stdout: FileHandle, _ stderr: FileHandle) {
        group.enter()
        DispatchQueue.global().async {
            self.out = stdout.readDataToEndOfFile()
            self.group.leave()
        }
        group.enter()
        DispatchQueue.global().async {
            self.err = stderr.readDataToEndOfFile()
            self.group.leave()
        }
    }

    func finish() -> ([UInt8], [UInt8]) {
        group.wait()
        return ([UInt8](out), [UInt8](err))
    }
}

/// Stops a server by PID: `signal`, up to `grace` seconds to exit, then SIGKILL; returns once it has exited.
public func stopProcess(_ process: Process, _ signal: Int32, grace: Double) {
    guard process.isRunning else { return }
    kill(process.processIdentifier, signal)
    let deadline = Date().addingTimeInterval(grace)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
}

/// Fails loudly when a required tool is missing, rather than skipping.
public func requireTool(_ name: String) throws -> String {
    for directory in ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/sbin"] {
        let path = directory + "/" + name
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw TestFailure.message("required tool '\(name)' is not installed: run `make deps`")
}

/// A fresh private temporary folder, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init() throws {
        var template = Array("/tmp/secretsfs-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer -> String? in
            guard let base = buffer.baseAddress, let result = mkdtemp(base) else { return nil }
            return String(cString: result)
        }
        guard let made else { throw TestFailure.message("mkdtemp failed") }
        path = made
    }

    public func file(_ name: String) -> String { path + "/" + name }

    public func write(_ name: String, _ text: String, mode: Int = 0o600) throws -> String {
        let target = file(name)
        try Data(text.utf8).write(to: URL(fileURLWithPath: target))
        chmod(target, mode_t(mode))
        return target
    }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// The folder holding the built products (the test binary sits beside them).
public func productsDirectory() -> String {
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    var url = URL(fileURLWithPath: executable).deletingLastPathComponent()
    while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("secretsfs").path) {
        url = url.deletingLastPathComponent()
    }
    return url.path
}

/// The built `secretsfs` binary; fails when it was not built.
public func secretsfsBinary() throws -> String {
    let path = productsDirectory() + "/secretsfs"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw TestFailure.message("secretsfs binary not found beside the tests: run `swift build` first")
    }
    return path
}

/// The checkout the tests run from: the nearest folder above the build products that holds Package.swift (the
/// build folder may be `.build`, `.build-tsan`, ...).
public func repositoryRoot() -> String {
    var url = URL(fileURLWithPath: productsDirectory())
    while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
        url = url.deletingLastPathComponent()
    }
    return url.path
}

/// The binary of the previous release, built by `make previous-release` (Tests/Skew/build-previous.sh); fails loudly
/// when it is missing.
public func previousReleaseBinary() throws -> String {
    let path = repositoryRoot() + "/.build-prev/secretsfs-previous"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw TestFailure.message("\(path) is missing: run `make previous-release` (make test does)")
    }
    return path
}

/// Sends `signal` to a server process started by a test harness, if it is still running (SIGSTOP pauses it like a
/// hung backend, SIGCONT lets it go on).
public func signalServer(_ process: Process?, _ signal: Int32) {
    guard let process, process.isRunning else { return }
    let pid = process.processIdentifier
    kill(pid, signal)
    // SIGSTOP reaches every thread of the server asynchronously: wait until the kernel reports it stopped, so that
    // the next request cannot be answered by a thread that had not stopped yet.
    guard signal == SIGSTOP else { return }
    for _ in 0..<200 {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        if let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].hasPrefix(" T") { break }
        usleep(5_000)
    }
    usleep(20_000)
}

/// Polls `condition` every `every` seconds until it holds; fails naming `what` after `seconds`.
public func waitUntil(_ what: String, seconds: Double, every: Double = 0.1, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        guard Date() < deadline else { throw TestFailure.message("\(what): not within \(Int(seconds)) s") }
        usleep(useconds_t(every * 1_000_000))
    }
}

/// Reads a pipe line by line on a thread of its own until it closes: `line` for each line, then `ended` once.
public func readLines(
    _ handle: FileHandle, line: @escaping @Sendable (String) -> Void, ended: @escaping @Sendable () -> Void
) {
    Thread {
        var pending = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                line(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                pending = Data(pending[pending.index(after: newline)...])
            }
        }
        ended()
    }.start()
}

/// A cgroup v2 folder for a test (the unified hierarchy, wherever it is mounted), removed by the caller (rmdir,
/// once its processes are gone).
public func makeCgroup(_ name: String) throws -> String {
    let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
    var root: String?
    for line in mounts.split(separator: "\n") {
        let fields = line.split(separator: " ").map(String.init)
        if fields.count > 2 && fields[2] == "cgroup2" { root = fields[1] }
    }
    guard let root else { throw TestFailure.message("no cgroup2 hierarchy mounted") }
    let path = root + "/" + name
    guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
        throw TestFailure.message("cannot create cgroup \(path): errno \(errno)")
    }
    return path
}

/// `cat path` run inside cgroup folder `cgroup` (the shell joins it, then becomes cat): (status, stdout).
public func catInCgroup(_ path: String, cgroup: String) throws -> (status: Int32, text: String) {
    let result = try run(["/bin/sh", "-c", "echo $$ > '\(cgroup)/cgroup.procs' && exec cat '\(path)'"], timeout: 10)
    return (result.status, result.stdoutText)
}
