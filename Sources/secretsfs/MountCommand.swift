import ArgumentParser
import FuseBridge
import Glibc
import Handover
import SecretsCore
import Supervision

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount the secrets filesystem and serve it in the foreground.",
        discussion: """
            Mounts [mount] path (default /secrets) read-only and keeps it served until SIGINT or SIGTERM, then \
            unmounts and exits 0. This process (the supervisor) holds the FUSE connection and never opens a store; \
            a worker process (`secretsfs worker`) serves it. A worker that dies is replaced at once on the same \
            connection, so readers, bind mounts in containers included, see a pause, never ENOTCONN. \
            SIGHUP (systemctl reload) starts a worker from the binary and config now on disk and retires the old \
            one once the new one is ready; a config that does not parse keeps the old worker. SIGUSR2 re-executes \
            the supervisor itself in place (same PID, same connection). With auto_unmount (the default) a killed \
            supervisor leaves no dead mount behind. A store that fails (bad identity, tampered file) answers EIO \
            for its own paths; the others keep serving. Under systemd (NOTIFY_SOCKET set, Type=notify) it reports \
            READY=1 once a worker serves, RELOADING=1 and READY=1 around a reload, STOPPING=1 on stop.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(name: .long, help: "Mount here instead of [mount] path.")
    var mountpoint: String?

    @Flag(
        name: .long,
        help: """
            Take the mount over from the supervisor listening at [mount] takeover_socket (another process, another \
            binary, another mount namespace) instead of mounting: this process starts its own worker while the \
            running one serves, then receives the connection and the running supervisor exits 0 without unmounting. \
            Refused (another user, an unknown protocol version, a reload under way): exits 76, the running one keeps \
            serving. Without this flag a configured takeover_socket that answers is taken over too, and one that \
            does not is mounted fresh.
            """)
    var takeOver = false

    enum AfterHandover: String, ExpressibleByArgument, CaseIterable {
        case exit, wait
    }

    @Option(
        name: .long,
        help: """
            What this process does once it has handed its mount to another (exit|wait). exit: exits 0 at once. \
            wait: holds nothing more and waits for SIGTERM, then exits 0 without unmounting: for a container that \
            would otherwise be restarted into taking the mount back (a DaemonSet's old pod until it is deleted).
            """)
    var afterHandover: AfterHandover = .exit

    @Option(name: .long, help: .hidden)
    var resumeState: Int32?

    func run() throws {
        // Before any thread exists: the supervisor reads its signals from a signalfd.
        Supervisor.blockSignals()
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        let supervisor: Supervisor
        let connection: (Int32, String) -> SupervisedConnection = { fd, path in
            SupervisedConnection(fd: fd, path: path) { FuseMount(fd: fd, path: path).unmount() }
        }
        if let resumeState {
            supervisor = try Self.orFail { () throws(SecretsError) in
                try Supervisor.resume(memfd: resumeState, logger: logger, connection: connection)
            }
        } else {
            let text: String
            do {
                text = try FileIO.readText(options.config)
            } catch {
                printError("\(options.config): cannot read config: \(error)")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
            var config: Config
            do {
                config = try Config.parse(text: text, file: options.config)
            } catch {
                printError("\(error)")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
            if let mountpoint { config.mount.path = mountpoint }
            if let socket = config.mount.takeoverSocket {
                do {
                    let taking = try Supervisor.takeOver(
                        socket: socket, configPath: options.config, configText: text, logLevel: options.logLevel,
                        logger: logger, connection: connection)
                    let status = taking.run()
                    if taking.handedOver { Self.afterHandover(afterHandover) }
                    if status != 0 { throw ExitCode(status) }
                    return
                } catch let error as SecretsError {
                    // Nothing answers there: the first pod on this node mounts.
                    if error.code != .notFound || takeOver {
                        printError("\(error)")
                        throw ExitCode(
                            error.code == .unsupported ? ExitStatus.protocolMismatch.rawValue : ExitStatus.failure.rawValue)
                    }
                    logger.info("no supervisor to take over; mounting", metadata: ["socket": "\(socket)"])
                }
            } else if takeOver {
                printError("\(options.config): --take-over needs [mount] takeover_socket")
                throw ExitCode(ExitStatus.usage.rawValue)
            }
            let mount = config.mount
            let (mounted, initRequest) = try Self.orFail { () throws(SecretsError) in
                try FuseMount.mount(mount, logger: logger)
            }
            var generator = SystemRandomNumberGenerator()
            let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            var state = SupervisorState(
                fuseFD: mounted.fd, mountPath: mounted.path, initRequest: initRequest, digestKey: key,
                configPath: options.config, configText: text, noOpen: config.mount.noOpen, logLevel: options.logLevel)
            state.unmountSockets = mounted.unmountSockets
            supervisor = try Self.orFail { () throws(SecretsError) in
                try Supervisor(state: state, connection: connection(mounted.fd, mounted.path), logger: logger)
            }
        }
        supervisor.listenForTakeovers()
        let status = supervisor.run()
        if supervisor.handedOver { Self.afterHandover(afterHandover) }
        if status != 0 { throw ExitCode(status) }
    }

    /// After a handover: return (exit 0), or drop every descriptor and wait for SIGTERM or SIGINT (blocked since
    /// the start, so sigwait takes them).
    static func afterHandover(_ mode: AfterHandover) {
        guard mode == .wait else { return }
        for fd in Int32(3)..<Int32(4096) { close(fd) }
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, SIGTERM)
        sigaddset(&mask, SIGINT)
        var received: Int32 = 0
        sigwait(&mask, &received)
    }

    static func orFail<T>(_ body: () throws(SecretsError) -> T) throws -> T {
        do {
            return try body()
        } catch {
            SystemdNotify.send("STATUS=failed: \(error)")
            printError("\(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
    }
}
