import CLinux
import Glibc
import Handover
import Logging
import SecretsCore

/// The mounted FUSE connection as the supervisor holds it: the open `/dev/fuse` file, where it is mounted, and how
/// to unmount it (the FUSE bridge's business; this module never links it).
public struct SupervisedConnection: Sendable {
    public var fd: Int32
    public var path: String
    public var unmount: @Sendable () -> Void

    public init(fd: Int32, path: String, unmount: @escaping @Sendable () -> Void) {
        self.fd = fd
        self.path = path
        self.unmount = unmount
    }
}

/// `secretsfs mount`'s process: holds the FUSE connection and keeps a worker serving it.
///
/// The supervisor mounts, keeps the `/dev/fuse` open file and the kernel's one FUSE_INIT, and starts workers (this
/// binary, `secretsfs worker`) that serve that same open file. When a worker dies it starts another (at once, or
/// after the `RestartPolicy` pause); on SIGHUP it starts one with the binary and config now on disk and retires the
/// old one once the new one is ready; on SIGUSR2 it re-executes itself (same PID, same descriptors). Before either,
/// it asks the binary on disk which handover protocol it speaks, and speaks the newest both know or refuses and
/// keeps the running worker. It keeps the node table the workers report and never a secret value; it never opens a
/// store. One thread: a poll loop over a signalfd and the workers' control sockets.
public final class Supervisor {
    var state: SupervisorState
    let connection: SupervisedConnection
    let logger: Logger
    var current: WorkerProcess?
    var pending: WorkerProcess?
    var restartAt: Double?
    var policy = RestartPolicy()
    var deaths = RequestsOfDeath()
    var binaries = BinaryVersions()
    var exitStatus: Int32?
    let signalFD: Int32
    /// Takeover (`Supervisor+Takeover.swift`): the listening socket, the process taking this mount over, and on
    /// the taking side the previous supervisor.
    var takeoverListener: Int32 = -1
    var takeoverPeer: TakeoverPeer?
    var takingOver: TakeoverChannel?
    /// This supervisor handed its mount to another process (and exits without unmounting).
    public internal(set) var handedOver = false

    public init(state: SupervisorState, connection: SupervisedConnection, logger: Logger) throws(SecretsError) {
        self.state = state
        self.connection = connection
        self.logger = logger
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in WorkerProcess.handledSignals { sigaddset(&mask, signal) }
        signalFD = secretsfs_signalfd(&mask)
        guard signalFD >= 0 else { throw SecretsError(.io, "signalfd: \(FileIO.errnoText(errno))") }
        // Where workers keep their encrypted last-known-good snapshot for the next one; never read here.
        if self.state.snapshotFD < 0 {
            let fd = secretsfs_memfd("secretsfs-snapshot")
            if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            self.state.snapshotFD = fd
        }
    }

    /// Blocks the signals the loop reads from its signalfd; call before any other thread exists.
    public static func blockSignals() {
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in WorkerProcess.handledSignals { sigaddset(&mask, signal) }
        pthread_sigmask(SIG_BLOCK, &mask, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    // MARK: - The loop

    /// Runs until SIGTERM/SIGINT (exit 0) or a first worker that cannot start (its exit status).
    public func run() -> Int32 {
        if current == nil && pending == nil { pending = spawn(reload: false, configText: state.configText) }
        while exitStatus == nil {
            var fds = [pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)]
            for worker in [current, pending].compactMap({ $0 }) where !worker.closed {
                fds.append(pollfd(fd: worker.channel.fd, events: Int16(POLLIN), revents: 0))
            }
            for fd in [takeoverListener, takeoverPeer?.channel.fd ?? -1] where fd >= 0 {
                fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            }
            var timeout: Int32 = -1
            if let restartAt { timeout = Int32(max(0, (restartAt - CoreClock.monotonic()) * 1000)) }
            let count = poll(&fds, nfds_t(fds.count), timeout)
            if count < 0 && errno != EINTR {
                logger.critical("supervisor poll failed", metadata: ["errno": "\(errno)"])
                return ExitStatus.failure.rawValue
            }
            if fds[0].revents != 0 { readSignals() }
            pumpMessages()
            pumpTakeover()
            if let due = restartAt, CoreClock.monotonic() >= due, exitStatus == nil {
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
                case .invalid(let error):
                    logger.error("unreadable control message; the worker is taken for gone", metadata: [
                        "worker": "\(worker.pid)", "error": "\(error)",
                    ])
                    self[keyPath: which]?.closed = true
                    kill(worker.pid, SIGKILL)
                    continue
                case .message(let message):
                    handle(message, from: which)
                    continue
                }
                break
            }
        }
    }

    private func handle(_ message: HandoverMessage, from which: ReferenceWritableKeyPath<Supervisor, WorkerProcess?>) {
        switch message {
        case .ready where which == \Supervisor.pending:
            if takingOver != nil { completeTakeover() } else { takeOver() }
        case .node, .removed:
            if which == \Supervisor.current { state.table.apply(message) }
        case .serving where which == \Supervisor.current:
            guard var worker = current else { return }
            worker.serving = true
            current = worker
            if !state.everServed {
                state.everServed = true
                SystemdNotify.send("READY=1\nSTATUS=serving \(connection.path)")
                logger.info("serving", metadata: ["path": "\(connection.path)", "worker": "\(worker.pid)"])
            } else if worker.tookOver {
                SystemdNotify.send("READY=1\nSTATUS=serving \(connection.path) (taken over)")
                logger.notice("took the mount over: the new worker serves", metadata: ["worker": "\(worker.pid)"])
            } else if worker.reload {
                SystemdNotify.send("READY=1\nSTATUS=serving \(connection.path) (reloaded)")
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
    func takeOver() {
        guard var next = pending else { return }
        retireCurrent()
        state.configText = next.configText
        for record in state.table.records { next.channel.send(.node(record)) }
        next.channel.send(.go(nextInode: state.table.highestInode + 1))
        next.startedAt = CoreClock.monotonic()
        pending = nil
        current = next
    }

    /// Kills and reaps the serving worker (a reload's old one, or one whose mount is handed over) and reads what it
    /// left into the table. Retired, not crashed: what it had in flight is resent by the next worker, and says
    /// nothing about requests of death.
    func retireCurrent() {
        guard let old = current else { return }
        kill(old.pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(old.pid, &status, 0) < 0 && errno == EINTR {}
        old.inflight?.release()
        deaths.lastCrash = []
        drain(old)
        current = nil
    }

    /// Reads what a dead worker sent before it died into the table, then closes its channel.
    func drain(_ worker: WorkerProcess) {
        while case .message(let message) = worker.channel.receive(wait: false) {
            state.table.apply(message)
        }
        worker.channel.close()
    }

    func reapChildren() {
        while true {
            var status: Int32 = 0
            let pid = waitpid(-1, &status, WNOHANG)
            if pid <= 0 { return }
            let how = Exit.describe(status)
            if let worker = current, worker.pid == pid {
                // Before anything is resent: a request this worker died on after the last one did gets EIO here.
                _ = deaths.workerCrashed(worker.inflight, fuseFD: connection.fd, logger: logger)
                worker.inflight?.release()
                drain(worker)
                current = nil
                if Exit.code(status) == ExitStatus.connectionEnded.rawValue {
                    // Another worker would end at once too: nothing is left to serve.
                    logger.error(
                        "the FUSE connection ended (unmounted from outside, or aborted); exiting",
                        metadata: ["path": "\(connection.path)", "worker": "\(pid)"])
                    connection.unmount()
                    exitStatus = ExitStatus.failure.rawValue
                    continue
                }
                workerDied(worker, how: how)
            } else if let worker = pending, worker.pid == pid {
                worker.channel.close()
                worker.inflight?.release()
                pending = nil
                if let previous = takingOver {
                    // Nothing was handed over yet: the previous supervisor keeps serving.
                    logger.error(
                        "the new worker failed before the takeover; the previous supervisor keeps serving",
                        metadata: ["worker": "\(pid)", "exit": "\(how)"])
                    previous.close()
                    takingOver = nil
                    exitStatus = ExitStatus.failure.rawValue
                    continue
                }
                switch RestartPolicy.pendingDied(
                    everServed: state.everServed, hasCurrent: current != nil, exitCode: Exit.code(status))
                {
                case .giveUp(let code):
                    // The first worker could not start (a store's config is wrong, say): mount nothing.
                    logger.error("the worker could not start; unmounting", metadata: ["worker": "\(pid)", "exit": "\(how)"])
                    connection.unmount()
                    exitStatus = code
                case .keepServing(let protocolRefused):
                    logger.error(
                        protocolRefused
                            ? "the new binary refused this supervisor's handover protocol; the running worker keeps serving"
                            : "the new worker failed before taking over; the running worker keeps serving",
                        metadata: ["worker": "\(pid)", "exit": "\(how)"])
                    SystemdNotify.send("READY=1\nSTATUS=reload failed; still serving \(connection.path)")
                case .restart:
                    workerDied(worker, how: how)
                }
            }
        }
    }

    /// Starts the next worker at once, or after the policy's pause when workers keep dying young.
    private func workerDied(_ worker: WorkerProcess, how: String) {
        let lived = CoreClock.monotonic() - worker.startedAt
        state.restarts += 1
        let delay = policy.pauseAfterDeath(served: worker.serving)
        logger.error(
            "worker died; starting another on the same connection",
            metadata: [
                "worker": "\(worker.pid)", "exit": "\(how)", "served": "\(worker.serving)",
                "lived_seconds": "\((lived * 1000).rounded() / 1000)", "in_seconds": "\(delay)",
                "failures": "\(policy.failures)", "restarts": "\(state.restarts)",
            ])
        guard exitStatus == nil, pending == nil else { return }
        restartAt = CoreClock.monotonic() + delay
    }

    // MARK: - Reload, re-exec, stop

    /// SIGHUP: a worker from the binary and config now on disk; the running one serves until it is ready.
    private func reload() {
        guard pending == nil else {
            logger.warning("reload ignored: a new worker is already starting")
            return
        }
        guard takeoverPeer?.version == nil, takingOver == nil else {
            logger.warning("reload ignored: a takeover is under way")
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
        if config.mount.noOpen != state.noOpen || config.mount.path != connection.path {
            logger.warning(
                "mount settings are fixed for the life of the mount (path, no_open, allow_other, auto_unmount); keeping the old ones, restart the service to change them")
        }
        SystemdNotify.send("RELOADING=1")
        logger.info("reloading", metadata: ["config": "\(state.configPath)", "binary": "\(Self.binaryPath())"])
        pending = spawn(reload: true, configText: text)
        if pending == nil { SystemdNotify.send("READY=1\nSTATUS=reload failed; still serving \(connection.path)") }
    }

    private func stop() {
        SystemdNotify.send("STOPPING=1")
        connection.unmount()
        for worker in [current, pending].compactMap({ $0 }) {
            kill(worker.pid, SIGTERM)
            var status: Int32 = 0
            while waitpid(worker.pid, &status, 0) < 0 && errno == EINTR {}
        }
        current = nil
        pending = nil
        logger.info("unmounted", metadata: ["path": "\(connection.path)"])
        exitStatus = 0
    }

    /// The protocol to speak with `binary`, or nil (logged) when there is none both know.
    func negotiate(_ binary: String, purpose: String) -> UInt16? {
        let theirs: ClosedRange<UInt16>
        do {
            theirs = try binaries.versions(of: binary)
        } catch {
            logger.error("cannot ask the binary which handover protocol it speaks", metadata: [
                "binary": "\(binary)", "for": "\(purpose)", "error": "\(error)",
            ])
            return nil
        }
        guard let version = HandoverProtocol.negotiate(HandoverProtocol.supported, theirs) else {
            logger.error(
                "the binary on disk speaks no handover protocol this supervisor knows; refusing, the running worker keeps serving",
                metadata: [
                    "binary": "\(binary)", "for": "\(purpose)", "theirs": "\(theirs.lowerBound)-\(theirs.upperBound)",
                    "ours": "\(HandoverProtocol.oldest)-\(HandoverProtocol.current)",
                ])
            return nil
        }
        // CSI volumes' records exist from version 3 on: an older binary could not read the node table.
        if version < HandoverProtocol.csiVolumes && state.table.holdsVolumes {
            logger.error(
                "the binary on disk speaks a handover protocol without CSI volumes while volumes are published; refusing, the running worker keeps serving",
                metadata: ["binary": "\(binary)", "for": "\(purpose)", "version": "\(version)"])
            return nil
        }
        if version != HandoverProtocol.current {
            logger.notice("speaking an older handover protocol with the binary on disk", metadata: [
                "binary": "\(binary)", "for": "\(purpose)", "version": "\(version)",
            ])
        }
        return version
    }

    /// SIGUSR2: replace this supervisor with the binary now on disk, keeping the PID, the FUSE connection and the
    /// running worker. Everything it knows goes into a memfd the new image reads back, in a version it reads.
    private func reexecute() {
        guard pending == nil, takeoverPeer?.version == nil, takingOver == nil else {
            logger.warning("supervisor re-exec postponed: a new worker or a takeover is under way; send SIGUSR2 again")
            return
        }
        let binary = Self.binaryPath()
        guard let version = negotiate(binary, purpose: "re-exec") else { return }
        var saved = state
        saved.fuseFD = connection.fd
        saved.mountPath = connection.path
        saved.worker = current.map {
            .init(
                pid: $0.pid, channelFD: $0.channel.fd, serving: $0.serving, protocolVersion: $0.channel.version,
                inflightFD: version >= 2 ? $0.inflight?.fd ?? -1 : -1)
        }
        let memfd = secretsfs_memfd("secretsfs-supervisor")
        guard memfd >= 0 else {
            logger.error("supervisor re-exec failed: memfd_create", metadata: ["errno": "\(errno)"])
            return
        }
        let bytes = saved.encoded(version: version)
        let written = bytes.withUnsafeBytes { write(memfd, $0.baseAddress, $0.count) }
        guard written == bytes.count, lseek(memfd, 0, SEEK_SET) == 0 else {
            close(memfd)
            logger.error("supervisor re-exec failed: cannot write its state")
            return
        }
        // The in-flight page only goes to an image that reads its descriptor from the state (version 2 and later).
        let page = version >= 2 ? current?.inflight.map { [$0.fd] } ?? [] : []
        let snapshot = version >= 2 && state.snapshotFD >= 0 ? [state.snapshotFD] : []
        let keep = [connection.fd] + (current.map { [$0.channel.fd] } ?? []) + page + snapshot
        for fd in keep { _ = fcntl(fd, F_SETFD, 0) }
        logger.notice("re-executing the supervisor", metadata: ["binary": "\(binary)", "state_version": "\(version)"])
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
    public static func resume(
        memfd: Int32, logger: Logger, connection: (Int32, String) -> SupervisedConnection
    ) throws(SecretsError) -> Supervisor {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(memfd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        close(memfd)
        let (state, version) = try SupervisorState.decode(bytes)
        _ = fcntl(state.fuseFD, F_SETFD, FD_CLOEXEC)
        if state.snapshotFD >= 0 { _ = fcntl(state.snapshotFD, F_SETFD, FD_CLOEXEC) }
        let supervisor = try Supervisor(
            state: state, connection: connection(state.fuseFD, state.mountPath), logger: logger)
        if let worker = state.worker {
            _ = fcntl(worker.channelFD, F_SETFD, FD_CLOEXEC)
            if worker.inflightFD >= 0 { _ = fcntl(worker.inflightFD, F_SETFD, FD_CLOEXEC) }
            supervisor.current = WorkerProcess(
                pid: worker.pid, channel: ControlChannel(fd: worker.channelFD, version: worker.protocolVersion),
                configText: state.configText, reload: false, serving: worker.serving, startedAt: CoreClock.monotonic(),
                inflight: worker.inflightFD >= 0 ? InflightMapping.map(worker.inflightFD) : nil)
        }
        logger.notice(
            "supervisor re-executed; the worker keeps serving",
            metadata: ["worker": "\(state.worker?.pid ?? 0)", "state_version": "\(version)"])
        // A worker that died while this image was starting shows up on the first SIGCHLD poll.
        supervisor.reapChildren()
        if supervisor.current == nil && supervisor.pending == nil {
            supervisor.restartAt = CoreClock.monotonic()
        }
        return supervisor
    }

    // MARK: - Workers

    func spawn(reload: Bool, configText: String) -> WorkerProcess? {
        let binary = Self.binaryPath()
        guard let version = negotiate(binary, purpose: reload ? "reload" : "worker") else {
            // After a crash there is no worker to keep: try again later (a compatible binary may be installed).
            if !reload { restartAt = CoreClock.monotonic() + RestartPolicy.incompatibleRetry }
            return nil
        }
        let hello = HandoverMessage.Hello(
            digestKey: state.digestKey, initRequest: state.initRequest, configPath: state.configPath,
            configText: configText, reload: reload, noOpen: state.noOpen, mountPath: connection.path,
            restarts: state.restarts)
        do {
            let worker = try WorkerProcess.spawn(
                binary: binary, fuseFD: connection.fd, logLevel: state.logLevel, version: version, hello: hello,
                snapshotFD: state.snapshotFD)
            logger.debug(
                "worker started", metadata: ["worker": "\(worker.pid)", "reload": "\(reload)", "protocol": "\(version)"])
            return worker
        } catch {
            logger.error("cannot start a worker", metadata: ["binary": "\(binary)", "error": "\(error)"])
            if !reload { restartAt = CoreClock.monotonic() + 1 }
            return nil
        }
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
}
