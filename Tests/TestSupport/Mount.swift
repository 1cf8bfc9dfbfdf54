import Foundation

/// Runs `body` on its own thread and waits at most `seconds`. A filesystem call stuck in the kernel cannot be
/// cancelled, so on timeout `onTimeout` runs (abort the FUSE connection) and the test fails instead of hanging.
public func withTimeout<T: Sendable>(
    _ seconds: Double, onTimeout: @Sendable () -> Void = {}, _ body: @escaping @Sendable () throws -> T
) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        box.result = Result { try body() }
        done.signal()
    }
    thread.start()
    guard done.wait(timeout: .now() + seconds) == .success, let result = box.result else {
        onTimeout()
        throw TestFailure.message("filesystem access timed out after \(seconds)s")
    }
    return try result.get()
}

/// Written once by the worker thread before it signals; read after the wait.
final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}

public struct FSError: Error, Equatable, CustomStringConvertible {
    public let code: Int32
    public init(code: Int32) { self.code = code }
    public var description: String { "errno \(code) (\(String(cString: strerror(code))))" }
}

/// A running `secretsfs mount` subprocess and its mount point.
public final class MountedSecretsFS: @unchecked Sendable {
    public let mountpoint: String
    public let logPath: String
    public let process: Process
    private let device: UInt64

    /// Starts the daemon with `config` and waits until the mount shows in /proc/mounts.
    /// `launcher`: a command that starts the daemon (for example setpriv to run it as another user).
    public init(
        binary: String, config: String, mountpoint: String, logPath: String, environment: [String: String] = [:],
        launcher: [String] = [], arguments extra: [String] = []
    ) throws {
        self.mountpoint = mountpoint
        self.logPath = logPath
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process = Process()
        let arguments = ["mount", "--config", config, "--log-level", "debug"] + extra
        if let first = launcher.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = Array(launcher.dropFirst()) + [binary] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = arguments
        }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        // Ready is the daemon's own word: READY=1 on a notify socket of ours, sent once a worker serves the mount
        // (unless the test listens on NOTIFY_SOCKET itself; then the mount table is watched).
        var environment = environment
        var notify: NotifySocket?
        if environment["NOTIFY_SOCKET"] == nil {
            let socket = try NotifySocket(name: logPath + ".notify")
            chmod(socket.name, 0o666)
            notify = socket
            environment["NOTIFY_SOCKET"] = socket.name
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        defer { notify?.close() }
        try process.run()
        let deadline = Date().addingTimeInterval(15)
        let daemon = process
        /// Stops what started and says why (thrown by the caller, so the optimizer sees a plain throw).
        func failure() -> TestFailure {
            let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
            _ = try? run(["fusermount3", "-u", "-z", mountpoint], timeout: 10)
            return TestFailure.message("secretsfs did not mount at \(mountpoint):\n\(output)")
        }
        if let notify {
            var ready = false
            while !ready {
                guard daemon.isRunning, Date() < deadline else { throw failure() }
                // In slices, so that a daemon that exits is noticed at once.
                if let message = try? notify.receive(timeout: 0.2) {
                    ready = message.split(separator: "\n").contains("READY=1")
                }
            }
        } else {
            while !Self.isMounted(mountpoint) {
                guard daemon.isRunning, Date() < deadline else { throw failure() }
                usleep(20_000)
            }
        }
        var info = stat()
        device = stat(mountpoint, &info) == 0 ? UInt64(info.st_dev) : 0
    }

    public static func isMounted(_ path: String) -> Bool {
        guard let mounts = try? String(contentsOfFile: "/proc/mounts", encoding: .utf8) else { return false }
        return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
    }

    public func path(_ relative: String) -> String { mountpoint + "/" + relative }

    /// A file of this mount's FUSE connection in the fusectl filesystem (mounted here if the machine has not).
    func connectionFile(_ name: String) -> String {
        let root = "/sys/fs/fuse/connections"
        if !Self.isMounted(root) {
            _ = try? run(["/usr/bin/mount", "-t", "fusectl", "fusectl", root], timeout: 10)
        }
        let minor = device & 0xff | ((device >> 12) & 0xfff00)
        return "\(root)/\(minor)/\(name)"
    }

    /// How many requests the kernel has sent on this connection that have no answer yet (fusectl's `waiting`).
    public func waitingRequests() -> Int? {
        guard let text = try? String(contentsOfFile: connectionFile("waiting"), encoding: .utf8) else { return nil }
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Waits until at least `count` requests are unanswered on the connection (a reader is blocked in the daemon).
    public func waitForWaitingRequests(_ count: Int = 1, seconds: Double = 10) throws {
        try waitUntil("\(count) unanswered FUSE request(s)", seconds: seconds, every: 0.01) {
            (waitingRequests() ?? 0) >= count
        }
    }

    /// Aborts this mount's FUSE connection, so that any call stuck on it returns.
    public func abortConnection() {
        if let handle = FileHandle(forWritingAtPath: connectionFile("abort")) {
            handle.write(Data("1".utf8))
            try? handle.close()
        }
    }

    /// Reads a whole file through the mount with a timeout; errno failures come back as `FSError`.
    public func read(_ relative: String, timeout: Double = 10) throws -> [UInt8] {
        let full = path(relative)
        return try withTimeout(timeout, onTimeout: abortConnection) {
            let fd = open(full, O_RDONLY)
            guard fd >= 0 else { throw FSError(code: errno) }
            defer { close(fd) }
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
                if count < 0 { throw FSError(code: errno) }
                if count == 0 { break }
                out += buffer[0..<count]
            }
            return out
        }
    }

    public func readText(_ relative: String, timeout: Double = 10) throws -> String {
        String(decoding: try read(relative, timeout: timeout), as: UTF8.self)
    }

    /// Reads `relative` until it holds `expected` or `seconds` pass; returns the last text read.
    public func readText(_ relative: String, until expected: String, within seconds: Double, every pause: Double = 0.02)
        throws -> String
    {
        let deadline = Date().addingTimeInterval(seconds)
        var text = try readText(relative)
        while text != expected && Date() < deadline {
            usleep(useconds_t(pause * 1_000_000))
            text = try readText(relative)
        }
        return text
    }

    /// Lists a directory with a timeout.
    public func list(_ relative: String, timeout: Double = 10) throws -> [String] {
        let full = path(relative)
        return try withTimeout(timeout, onTimeout: abortConnection) {
            guard let dir = opendir(full) else { throw FSError(code: errno) }
            defer { closedir(dir) }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if name != "." && name != ".." { names.append(name) }
            }
            return names.sorted()
        }
    }

    /// stat(2) with a timeout.
    public func status(_ relative: String, timeout: Double = 10) throws -> stat {
        let full = path(relative)
        return try withTimeout(timeout, onTimeout: abortConnection) {
            var info = stat()
            guard stat(full, &info) == 0 else { throw FSError(code: errno) }
            return info
        }
    }

    /// Runs a raw call on a path with a timeout and returns errno (0 on success).
    public func errnoOf(_ relative: String, timeout: Double = 10, _ call: @escaping @Sendable (String) -> Int32)
        throws -> Int32
    {
        let full = path(relative)
        return try withTimeout(timeout, onTimeout: abortConnection) {
            call(full) < 0 ? errno : 0
        }
    }

    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends `signal` and waits for the daemon to exit; returns its exit status, or nil if it did not exit.
    public func signal(_ signal: Int32, wait seconds: Double = 10) -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    /// Teardown: stop the daemon (TERM, then KILL), always lazily unmount.
    public func stop() {
        if process.isRunning, signal(SIGTERM, wait: 5) == nil {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        if Self.isMounted(mountpoint) { abortConnection() }
        _ = try? run(["fusermount3", "-u", "-z", mountpoint], timeout: 10)
    }
}

extension MountedSecretsFS {
    /// The pid of the worker serving the mount now (a child of the supervisor running `secretsfs worker`).
    public func workerPID() -> pid_t? {
        // A launcher such as setpriv execs the daemon: the process's pid is the supervisor's.
        let supervisor = process.processIdentifier
        guard let children = try? String(contentsOfFile: "/proc/\(supervisor)/task/\(supervisor)/children", encoding: .utf8)
        else { return nil }
        for child in children.split(separator: " ").compactMap({ pid_t($0) }) {
            let command = (try? String(contentsOfFile: "/proc/\(child)/cmdline", encoding: .utf8)) ?? ""
            if command.split(separator: "\0").dropFirst().first == "worker" { return child }
        }
        return nil
    }

    /// Waits until a worker other than `old` serves the mount (its "serving" line is in the log `count` times).
    public func waitForLog(_ text: String, count: Int = 1, within seconds: Double = 20) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while log.components(separatedBy: text).count - 1 < count {
            guard Date() < deadline else { throw TestFailure.message("'\(text)' not logged \(count)x within \(seconds)s") }
            usleep(10_000)
        }
    }
}
