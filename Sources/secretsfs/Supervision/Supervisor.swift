import CLinux
import FuseBridge
import Glibc
import Logging
import SecretsCore

/// `secretsfs mount`: holds the FUSE connection and keeps a worker serving it.
///
/// The supervisor mounts, keeps the `/dev/fuse` open file and the kernel's one FUSE_INIT, and starts workers (this
/// binary, `secretsfs worker`) that serve that same open file. When a worker dies it starts another at once; on
/// SIGHUP it starts one with the binary and config now on disk and retires the old one once the new one is ready;
/// on SIGUSR2 it re-executes itself (same PID, same descriptors) to pick up a new supervisor. It keeps the node
/// table the workers report (ids, paths, sizes, keyed digests) and never a secret value; it never opens a store.
/// One thread: a poll loop over a signalfd and the workers' control sockets.
final class Supervisor {
    struct Worker {
        var pid: pid_t
        var channel: ControlChannel
        var configText: String
        var reload: Bool
        var serving = false
        var startedAt: Double
        var closed = false
    }

    struct State {
        var connection: FuseMount
        var initRequest: [UInt8]
        var digestKey: [UInt8]
        var configPath: String
        var configText: String
        var noOpen: Bool
        var logLevel: String
        var table = NodeTable()
        var everServed = false
    }

    var state: State
    let logger: Logger
    var current: Worker?
    var pending: Worker?
    var restartAt: Double?
    var failures = 0
    /// Workers that died and were replaced (for the metrics the worker serves).
    var restarts: UInt64 = 0
    var exitStatus: Int32?
    let signalFD: Int32
    static let handledSignals = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD]
    /// A worker that served this long before dying is not counted as crashing in a loop (one that dies at start,
    /// or on the first request it is given again and again, is).
    static let healthyAfter = 2.0

    init(state: State, logger: Logger) throws(SecretsError) {
        self.state = state
        self.logger = logger
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in Self.handledSignals { sigaddset(&mask, signal) }
        signalFD = secretsfs_signalfd(&mask)
        guard signalFD >= 0 else { throw SecretsError(.io, "signalfd: \(FileIO.errnoText(errno))") }
    }

    /// Blocks the signals the loop reads from its signalfd; call before any other thread exists.
    static func blockSignals() {
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in handledSignals { sigaddset(&mask, signal) }
        pthread_sigmask(SIG_BLOCK, &mask, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    // MARK: - The loop

    /// Runs until SIGTERM/SIGINT (exit 0) or a first worker that cannot start (its exit status).
    func run() -> Int32 {
        if current == nil && pending == nil { pending = spawn(reload: false, configText: state.configText) }
        while exitStatus == nil {
            var fds = [pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)]
            for worker in [current, pending].compactMap({ $0 }) where !worker.closed {
                fds.append(pollfd(fd: worker.channel.fd, events: Int16(POLLIN), revents: 0))
            }
            var timeout: Int32 = -1
            if let restartAt { timeout = Int32(max(0, (restartAt - FileSystemCore.monotonicSeconds()) * 1000)) }
            let count = poll(&fds, nfds_t(fds.count), timeout)
            if count < 0 && errno != EINTR {
                logger.critical("supervisor poll failed", metadata: ["errno": "\(errno)"])
                return ExitStatus.failure.rawValue
            }
            if fds[0].revents != 0 { readSignals() }
            pumpMessages()
            if let due = restartAt, FileSystemCore.monotonicSeconds() >= due, exitStatus == nil {
                restartAt = nil
                if pending == nil && current == nil { pending = spawn(reload: false, configText: state.configText) }
            }
        }
        return exitStatus ?? 0
    }

    private func readSignals() {
        let size = Int(secretsfs_signalfd_siginfo_size())
        var info = [UInt8](repeating: 0, count: size)
        while info.withUnsafeMutableBytes({ read(signalFD, $0.baseAddress, size) }) == size {
            switch Int32(info.withUnsafeBytes { secretsfs_signalfd_signo($0.baseAddress) }) {
            case SIGCHLD: reapChildren()
            case SIGHUP: reload()
            case SIGUSR2: reexecute()
            case SIGUSR1:
                // logrotate: the worker reopens its audit log.
                if let worker = current { kill(worker.pid, SIGUSR1) }
            case SIGTERM, SIGINT: stop()
            default: break
            }
            var ready = pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)
            if poll(&ready, 1, 0) <= 0 { break }
        }
    }

    private func pumpMessages() {
        for which in [\Supervisor.current, \Supervisor.pending] {
            while let worker = self[keyPath: which], !worker.closed {
                switch worker.channel.receive(wait: false) {
                case .empty:
                    break
                case .closed:
                    self[keyPath: which]?.closed = true
                    continue
                case .message(let message):
                    handle(message, from: which)
                    continue
                }
                break
            }
        }
    }

    private func handle(_ message: HandoverMessage, from which: ReferenceWritableKeyPath<Supervisor, Worker?>) {
        switch message {
        case .ready where which == \Supervisor.pending:
            takeOver()
        case .node, .removed:
            if which == \Supervisor.current { state.table.apply(message) }
        case .serving where which == \Supervisor.current:
            guard var worker = current else { return }
            worker.serving = true
            current = worker
            if !state.everServed {
                state.everServed = true
                SystemdNotify.send("READY=1\nSTATUS=serving \(state.connection.path)")
                logger.info("serving", metadata: ["path": "\(state.connection.path)", "worker": "\(worker.pid)"])
            } else if worker.reload {
                SystemdNotify.send("READY=1\nSTATUS=serving \(state.connection.path) (reloaded)")
                logger.info("reloaded: the new worker serves", metadata: ["worker": "\(worker.pid)"])
            } else {
                logger.notice("a new worker serves the connection", metadata: ["worker": "\(worker.pid)"])
            }
        default:
            logger.warning("unexpected control message from a worker")
        }
    }

    /// The pending worker is ready: retire the current one (after it is gone no request can be half-taken), hand
    /// the pending one the node table, let it serve.
    private func takeOver() {
        guard var next = pending else { return }
        if let old = current {
            kill(old.pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(old.pid, &status, 0) < 0 && errno == EINTR {}
            drain(old)
            current = nil
        }
        state.configText = next.configText
        for record in state.table.records { next.channel.send(.node(record)) }
        next.channel.send(.go(nextInode: state.table.highestInode + 1))
        next.startedAt = FileSystemCore.monotonicSeconds()
        pending = nil
        current = next
    }

    /// Reads what a dead worker sent before it died into the table, then closes its channel.
    private func drain(_ worker: Worker) {
        while case .message(let message) = worker.channel.receive(wait: false) {
            state.table.apply(message)
        }
        worker.channel.close()
    }

    private func reapChildren() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { return }
            let how = Self.describe(status)
            if let worker = current, worker.pid == pid {
                drain(worker)
                current = nil
                workerDied(worker, how: how)
            } else if let worker = pending, worker.pid == pid {
                worker.channel.close()
                pending = nil
                if !state.everServed {
                    // The first worker could not start (a store's config is wrong, say): mount nothing.
                    logger.error("the worker could not start; unmounting", metadata: ["worker": "\(pid)", "exit": "\(how)"])
                    state.connection.unmount()
                    let code = Self.exitCode(status)
                    exitStatus = code == ExitStatus.invalidConfig.rawValue ? code : ExitStatus.failure.rawValue
                } else if current != nil {
                    logger.error(
                        "the new worker failed before taking over; the running worker keeps serving",
                        metadata: ["worker": "\(pid)", "exit": "\(how)"])
                    SystemdNotify.send("READY=1\nSTATUS=reload failed; still serving \(state.connection.path)")
                } else {
                    workerDied(worker, how: how)
                }
            }
        }
    }

    /// Starts the next worker at once, or after a growing pause when workers keep dying young.
    private func workerDied(_ worker: Worker, how: String) {
        let lived = FileSystemCore.monotonicSeconds() - worker.startedAt
        restarts += 1
        failures = worker.serving && lived >= Self.healthyAfter ? 1 : failures + 1
        let delay = failures <= 1 ? 0 : min(0.25 * Double(1 << min(failures - 2, 6)), 10)
        logger.error(
            "worker died; starting another on the same connection",
            metadata: ["worker": "\(worker.pid)", "exit": "\(how)", "in_seconds": "\(delay)", "failures": "\(failures)"])
        guard exitStatus == nil, pending == nil else { return }
        restartAt = FileSystemCore.monotonicSeconds() + delay
    }

    // MARK: - Reload, re-exec, stop

    /// SIGHUP: a worker from the binary and config now on disk; the running one serves until it is ready.
    private func reload() {
        guard pending == nil else {
            logger.warning("reload ignored: a new worker is already starting")
            return
        }
        let text: String
        let config: Config
        do {
            text = try FileIO.readText(state.configPath)
            config = try Config.parse(text: text, file: state.configPath)
        } catch {
            logger.error("reload refused; the running worker keeps serving", metadata: ["error": "\(error)"])
            return
        }
        if config.mount.noOpen != state.noOpen || config.mount.path != state.connection.path {
            logger.warning(
                "mount settings are fixed for the life of the mount (path, no_open, allow_other, auto_unmount); keeping the old ones, restart the service to change them")
        }
        SystemdNotify.send("RELOADING=1")
        logger.info("reloading", metadata: ["config": "\(state.configPath)", "binary": "\(Self.binaryPath())"])
        pending = spawn(reload: true, configText: text)
    }

    private func stop() {
        SystemdNotify.send("STOPPING=1")
        state.connection.unmount()
        for worker in [current, pending].compactMap({ $0 }) {
            kill(worker.pid, SIGTERM)
            var status: Int32 = 0
            while waitpid(worker.pid, &status, 0) < 0 && errno == EINTR {}
        }
        current = nil
        pending = nil
        logger.info("unmounted", metadata: ["path": "\(state.connection.path)"])
        exitStatus = 0
    }

    /// SIGUSR2: replace this supervisor with the binary now on disk, keeping the PID, the FUSE connection and the
    /// running worker. Everything it knows goes into a memfd the new image reads back.
    private func reexecute() {
        guard pending == nil else {
            logger.warning("supervisor re-exec postponed: a new worker is starting; send SIGUSR2 again")
            return
        }
        var writer = HandoverWriter()
        writer.u64(UInt64(state.connection.fd))
        writer.string(state.connection.path)
        writer.bytes(state.initRequest)
        writer.bytes(state.digestKey)
        writer.string(state.configPath)
        writer.string(state.configText)
        writer.byte(state.noOpen ? 1 : 0)
        writer.string(state.logLevel)
        writer.byte(state.everServed ? 1 : 0)
        writer.u64(UInt64(bitPattern: Int64(current?.pid ?? 0)))
        writer.u64(UInt64(bitPattern: Int64(current?.channel.fd ?? -1)))
        writer.byte(current?.serving == true ? 1 : 0)
        writer.u64(restarts)
        writer.bytes(state.table.encoded())
        let memfd = secretsfs_memfd("secretsfs-supervisor")
        guard memfd >= 0 else {
            logger.error("supervisor re-exec failed: memfd_create", metadata: ["errno": "\(errno)"])
            return
        }
        let bytes = writer.output
        let written = bytes.withUnsafeBytes { write(memfd, $0.baseAddress, $0.count) }
        guard written == bytes.count, lseek(memfd, 0, SEEK_SET) == 0 else {
            close(memfd)
            logger.error("supervisor re-exec failed: cannot write its state")
            return
        }
        let keep = [state.connection.fd] + (current.map { [$0.channel.fd] } ?? [])
        for fd in keep { _ = fcntl(fd, F_SETFD, 0) }
        let binary = Self.binaryPath()
        logger.notice("re-executing the supervisor", metadata: ["binary": "\(binary)"])
        let argv = [binary, "mount", "--config", state.configPath, "--log-level", state.logLevel, "--resume-state", "\(memfd)"]
        let cArgv = argv.map { strdup($0) } + [nil]
        execv(binary, cArgv)
        let failure = errno
        cArgv.forEach { free($0) }
        for fd in keep { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        close(memfd)
        logger.error("supervisor re-exec failed; this one keeps running", metadata: ["errno": "\(failure)"])
    }

    /// The state a re-executed supervisor was handed; the running worker stays its child.
    static func resume(memfd: Int32, logger: Logger) throws(SecretsError) -> Supervisor {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(memfd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        close(memfd)
        var reader = HandoverReader(bytes)
        let fd = Int32(truncatingIfNeeded: try reader.u64())
        let path = try reader.string()
        let initRequest = try reader.bytes()
        let digestKey = try reader.bytes()
        let configPath = try reader.string()
        let configText = try reader.string()
        let noOpen = try reader.byte() == 1
        let logLevel = try reader.string()
        let everServed = try reader.byte() == 1
        let pid = pid_t(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))
        let channelFD = Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))
        let serving = try reader.byte() == 1
        let restarts = try reader.u64()
        let table = try NodeTable.decode(try reader.bytes())
        try reader.finish()
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        var state = State(
            connection: FuseMount(fd: fd, path: path), initRequest: initRequest, digestKey: digestKey,
            configPath: configPath, configText: configText, noOpen: noOpen, logLevel: logLevel)
        state.table = table
        state.everServed = everServed
        let supervisor = try Supervisor(state: state, logger: logger)
        supervisor.restarts = restarts
        if pid > 0 && channelFD >= 0 {
            _ = fcntl(channelFD, F_SETFD, FD_CLOEXEC)
            supervisor.current = Worker(
                pid: pid, channel: ControlChannel(fd: channelFD), configText: configText, reload: false,
                serving: serving, startedAt: FileSystemCore.monotonicSeconds())
        }
        logger.notice("supervisor re-executed; the worker keeps serving", metadata: ["worker": "\(pid)"])
        // A worker that died while this image was starting shows up on the first SIGCHLD poll.
        supervisor.reapChildren()
        if supervisor.current == nil && supervisor.pending == nil {
            supervisor.restartAt = FileSystemCore.monotonicSeconds()
        }
        return supervisor
    }

    // MARK: - Workers

    /// Starts `secretsfs worker` with the connection on fd 3 and its control socket on fd 4, and says hello.
    private func spawn(reload: Bool, configText: String) -> Worker? {
        let mine: ControlChannel
        let theirs: ControlChannel
        do {
            (mine, theirs) = try ControlChannel.pair()
        } catch {
            logger.error("cannot start a worker", metadata: ["error": "\(error)"])
            restartAt = FileSystemCore.monotonicSeconds() + 1
            return nil
        }
        defer { theirs.close() }
        let binary = Self.binaryPath()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, state.connection.fd, 3)
        posix_spawn_file_actions_adddup2(&actions, theirs.fd, 4)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in Self.handledSignals + [SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = [binary, "worker", "--fuse-fd", "3", "--control-fd", "4", "--log-level", state.logLevel]
        let cArgv = argv.map { strdup($0) } + [nil]
        defer { cArgv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, binary, &actions, &attributes, cArgv, Glibc.environ)
        guard result == 0 else {
            mine.close()
            logger.error("cannot start a worker", metadata: ["binary": "\(binary)", "errno": "\(result)"])
            restartAt = FileSystemCore.monotonicSeconds() + 1
            return nil
        }
        var hello = HandoverMessage.Hello(
            digestKey: state.digestKey, initRequest: state.initRequest, configPath: state.configPath,
            configText: configText, reload: reload, noOpen: state.noOpen, mountPath: state.connection.path)
        hello.restarts = restarts
        mine.send(.hello(hello))
        logger.debug("worker started", metadata: ["worker": "\(pid)", "reload": "\(reload)"])
        return Worker(
            pid: pid, channel: mine, configText: configText, reload: reload,
            startedAt: FileSystemCore.monotonicSeconds())
    }

    /// The binary now at this program's path: after an upgrade replaced it, the new one.
    static func binaryPath() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return "/proc/self/exe" }
        let path = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let deleted = " (deleted)"
        return path.hasSuffix(deleted) ? String(path.dropLast(deleted.count)) : path
    }

    static func exitCode(_ status: Int32) -> Int32 { status & 0x7f == 0 ? (status >> 8) & 0xff : -1 }

    static func describe(_ status: Int32) -> String {
        status & 0x7f == 0 ? "exit \((status >> 8) & 0xff)" : "signal \(status & 0x7f)"
    }
}
