import Glibc
import Handover
import SecretsCore

/// A worker as the supervisor sees it: its process, its control channel, what it was started for.
struct WorkerProcess {
    var pid: pid_t
    var channel: ControlChannel
    var configText: String
    var reload: Bool
    var serving = false
    var startedAt: Double
    var closed = false
    /// Started by a process that took the mount over from another supervisor.
    var tookOver = false
    /// The page where it stamps the requests it serves (protocol version 2 and later).
    var inflight: InflightMapping?

    /// Signals the supervisor handles; a worker starts with all of them at their defaults and unblocked.
    static let handledSignals = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD]

    /// Starts `binary worker` with the connection on fd 3, its control socket on fd 4 (and from version 2 its
    /// in-flight page on fd 5 and the snapshot memfd on fd 6), and says hello in `version`.
    static func spawn(
        binary: String, fuseFD: Int32, logLevel: String, version: UInt16, hello: HandoverMessage.Hello,
        snapshotFD: Int32 = -1
    ) throws(SecretsError) -> WorkerProcess {
        let (mine, theirs) = try ControlChannel.pair(version: version)
        defer { theirs.close() }
        var argv = [binary, "worker", "--fuse-fd", "3", "--control-fd", "4", "--log-level", logLevel]
        var descriptors: [(source: Int32, target: Int32)] = [(fuseFD, 3), (theirs.fd, 4)]
        // Version 2: the worker stamps the requests it serves in a page on fd 5.
        let inflight = version >= 2 ? InflightMapping.create() : nil
        if let inflight {
            descriptors.append((inflight.fd, 5))
            argv += ["--inflight-fd", "5"]
        }
        // Version 2: the workers' encrypted snapshot of what they cached, on fd 6.
        if version >= 2, snapshotFD >= 0 {
            descriptors.append((snapshotFD, 6))
            argv += ["--snapshot-fd", "6"]
        }
        // Each source is first copied above every target, so no dup2 onto a target can overwrite a source that is
        // still to be copied (the supervisor's own descriptors may well be 3 to 6).
        let staged = descriptors.map { (fcntl($0.source, F_DUPFD_CLOEXEC, 64), $0.target) }
        defer { for (copy, _) in staged where copy >= 0 { close(copy) } }
        guard staged.allSatisfy({ $0.0 >= 0 }) else {
            mine.close()
            inflight?.release()
            throw SecretsError(.io, "cannot prepare a worker's descriptors: \(FileIO.errnoText(errno))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (copy, target) in staged { posix_spawn_file_actions_adddup2(&actions, copy, target) }
        let pid: pid_t
        do {
            pid = try spawnProcess(binary, argv, actions: &actions)
        } catch {
            mine.close()
            inflight?.release()
            throw error
        }
        mine.open()
        mine.send(.hello(hello))
        return WorkerProcess(
            pid: pid, channel: mine, configText: hello.configText, reload: hello.reload,
            startedAt: CoreClock.monotonic(), inflight: inflight)
    }

    /// posix_spawn with every handled signal unblocked and at its default.
    static func spawnProcess(
        _ binary: String, _ argv: [String], actions: inout posix_spawn_file_actions_t
    ) throws(SecretsError) -> pid_t {
        try ChildProcess.spawn(binary, argv, actions: &actions, defaultSignals: handledSignals + [SIGPIPE])
    }
}

/// Which handover protocol versions a binary speaks, asked by running `binary handover-protocol` (bounded in
/// time). A binary of version 0 does not know that command and exits with a usage error. Answers are kept per file
/// identity (device, inode, size, mtime), so a restart after a crash does not ask again.
struct BinaryVersions {
    struct Identity: Hashable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: Int
        var modifiedNanoseconds: Int
    }

    var known: [Identity: ClosedRange<UInt16>] = [:]
    static let timeout = 5.0

    /// This process's own binary speaks what this build speaks.
    init() {
        if let own = Self.identity("/proc/self/exe") { known[own] = HandoverProtocol.supported }
    }

    static func identity(_ path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modified: Int(info.st_mtim.tv_sec), modifiedNanoseconds: Int(info.st_mtim.tv_nsec))
    }

    /// The versions `binary` speaks, or an error saying why it cannot be asked.
    mutating func versions(of binary: String) throws(SecretsError) -> ClosedRange<UInt16> {
        guard let identity = Self.identity(binary) else {
            throw SecretsError(.io, "cannot stat \(binary): \(FileIO.errnoText(errno))")
        }
        if let range = known[identity] { return range }
        let range = try Self.ask(binary)
        known[identity] = range
        return range
    }

    static func ask(_ binary: String) throws(SecretsError) -> ClosedRange<UInt16> {
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else { throw SecretsError(.io, "pipe: \(FileIO.errnoText(errno))") }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let pid: pid_t
        do {
            pid = try WorkerProcess.spawnProcess(binary, [binary, "handover-protocol"], actions: &actions)
        } catch {
            close(pipeFDs[0])
            close(pipeFDs[1])
            throw error
        }
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        var output: [UInt8] = []
        let deadline = CoreClock.monotonic() + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        var ended = false
        while !ended && output.count < 65536 {
            let left = deadline - CoreClock.monotonic()
            guard left > 0 else { break }
            var ready = pollfd(fd: pipeFDs[0], events: Int16(POLLIN), revents: 0)
            let polled = poll(&ready, 1, Int32(left * 1000) + 1)
            if polled < 0 && errno == EINTR { continue }
            guard polled > 0 else { break }
            let count = buffer.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count > 0 { output += buffer[0..<count] } else { ended = true }
        }
        var status: Int32 = 0
        if !ended { kill(pid, SIGKILL) }
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if !ended { throw SecretsError(.timeout, "\(binary) handover-protocol did not answer within \(Int(timeout)) s") }
        if let range = HandoverProtocol.parseAnnouncement(String(decoding: output, as: UTF8.self)) { return range }
        // A release from before versions: it does not know the command (ArgumentParser's usage error).
        if Exit.code(status) == ExitStatus.usage.rawValue { return 0...0 }
        throw SecretsError(.io, "\(binary) handover-protocol: \(Exit.describe(status)), no answer")
    }
}

/// waitpid statuses.
enum Exit {
    static func code(_ status: Int32) -> Int32? { status & 0x7f == 0 ? (status >> 8) & 0xff : nil }

    static func describe(_ status: Int32) -> String {
        status & 0x7f == 0 ? "exit \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
    }
}
