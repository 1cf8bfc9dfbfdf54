import ArgumentParser
import Crypto
import Foundation
import FuseBridge
import Logging
import Prometheus
import SecretsCore
import StatusServer
import DaprGRPC

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve a FUSE connection handed over by `secretsfs mount` (started by the supervisor, not by hand).",
        discussion: """
            The supervisor (`secretsfs mount`) starts this with the mounted /dev/fuse descriptor and a control \
            socket. The worker reads the config the supervisor hands it, opens the stores, says it is ready, \
            receives the node table of earlier workers, then serves the connection until it ends. It exits when \
            the supervisor goes away. Exit status 2: the config it was handed is not valid.
            """,
        shouldDisplay: false
    )

    @Option(name: .long, help: "The mounted /dev/fuse descriptor, inherited from the supervisor.")
    var fuseFd: Int32

    @Option(name: .long, help: "The control socket to the supervisor, inherited.")
    var controlFd: Int32

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    /// Runs `body` on a thread of its own each time `signal` arrives (blocked everywhere else; threads started
    /// after this inherit the mask).
    static func onSignal(_ signal: Int32, _ body: @escaping @Sendable () -> Void) {
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, signal)
        pthread_sigmask(SIG_BLOCK, &mask, nil)
        Thread {
            var received: Int32 = 0
            var wanted = sigset_t()
            sigemptyset(&wanted)
            sigaddset(&wanted, signal)
            while true {
                if sigwait(&wanted, &received) == 0 { body() }
            }
        }.start()
    }

    func run() throws {
        // Ctrl-C and SIGHUP are the supervisor's; a terminal's SIGINT must not take the worker down with it.
        signal(SIGINT, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        var logger = Runtime.bootstrapLogging(level: logLevel)
        logger[metadataKey: "worker"] = "\(getpid())"
        // The worker holds decrypted values for as long as it runs: keep them out of swap.
        if let problem = ProcessHardening.lockMemory() { logger.warning("\(problem)") }
        let channel = ControlChannel(fd: controlFd)
        guard case .message(.hello(let hello)) = channel.receive() else {
            printError("no hello from a supervisor: the worker is started by `secretsfs mount`")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        var config: Config
        do {
            config = try Config.parse(text: hello.configText, file: hello.configPath)
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        if config.mount.noOpen != hello.noOpen {
            logger.warning("no_open is fixed for the life of the mount; keeping \(hello.noOpen)")
        }
        config.mount.noOpen = hello.noOpen
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let audit: AuditLog?
        do {
            audit = config.audit.enabled ? try AuditLog(config: config.audit, logger: logger) : nil
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        for rule in AccessPolicy(config: config).unmatchedRules(tops: resolver.topNames) {
            logger.warning(
                "access rule matches no store or scope (a typo?)",
                metadata: ["rule": "\(rule.path)", "at": "\(rule.location.file):\(rule.location.line):\(rule.location.column)"])
        }
        // Metrics must report somewhere before the first one is made.
        let registry: PrometheusCollectorRegistry? = config.metrics.map { _ in StatusServer.bootstrapMetrics() }
        let core = FileSystemCore(config: config, resolver: resolver, logger: logger, audit: audit)
        core.setWorkerRestarts(hello.restarts)
        // logrotate: SIGUSR1 (forwarded by the supervisor) reopens the audit log.
        Self.onSignal(SIGUSR1) { audit?.reopen() }
        // Say which stores are broken (they still get their directories and answer EIO). On a reload this runs while
        // the old worker still serves, warming connections; after a crash it runs once this worker serves, so a hung
        // backend never delays the failover.
        let probe: @Sendable () -> Void = { [logger] in
            for name in resolver.topNames {
                do {
                    let envs = try core.probe(name)
                    logger.info("ready", metadata: ["store": "\(name)", "envs": "\(envs.count)"])
                } catch {
                    logger.error("store failing; its paths answer EIO", metadata: ["store": "\(name)", "error": "\(error)"])
                }
            }
        }
        if hello.reload { probe() }
        channel.send(.ready)
        var records: [NodeRecord] = []
        var nextInode = FileSystemCore.rootInode + 1
        receiving: while true {
            switch channel.receive() {
            case .message(.node(let record)): records.append(record)
            case .message(.go(let next)):
                nextInode = next
                break receiving
            case .message: continue
            case .empty, .closed:
                logger.info("the supervisor retired this worker before it served")
                throw ExitCode(ExitStatus.success.rawValue)
            }
        }
        let key = SymmetricKey(data: hello.digestKey)
        let digest: @Sendable (SecretBytes) -> [UInt8] = { bytes in
            bytes.withUnsafeBytes { Array(HMAC<SHA256>.authenticationCode(for: $0, using: key)) }
        }
        core.adopt(records, nextInode: nextInode, handover: Handover(journal: channel, digest: digest))
        logger.debug("took over the node table", metadata: ["nodes": "\(records.count)", "next": "\(nextInode)"])
        // Change notices start once this worker serves (subscribing may wait on a backend).
        let served = config
        let startWatches: @Sendable () -> Void = { [logger] in
            for (name, store) in stores {
                let pushes = store.watch(locations: served.scopeLocations(of: name)) { changes in core.storeChanged(name, changes) }
                logger.debug("change notices", metadata: ["store": "\(name)", "push": "\(pushes)"])
            }
        }
        defer { stores.values.forEach { $0.close() } }
        // Only now, with the previous worker gone: it held the listening address until then.
        if let listen = config.metrics, let registry {
            StatusServer.start(listen: listen, core: core, registry: registry, logger: logger)
        }
        if let api = config.api {
            var token: String?
            if let file = api.tokenFile {
                do {
                    token = try FileIO.readText(file).trimmingCharacters(in: .whitespacesAndNewlines)
                } catch {
                    logger.error("the Dapr API token file cannot be read; the API stays off", metadata: ["error": "\(error)"])
                }
            }
            if api.tokenFile == nil || token != nil {
                let secrets = SecretsAPI(config: api, core: core, token: token)
                if let listen = api.daprHTTP { DaprAPI.start(secrets, listen: listen, logger: logger) }
                if let listen = api.daprGRPC { DaprGRPC.start(secrets, listen: listen, logger: logger) }
            }
        }
        // The supervisor going away ends the worker: nothing would restart it, and the mount goes with them.
        let watcher = Thread { [logger] in
            while true {
                if case .closed = channel.receive() { break }
            }
            // Unmount before leaving: left to fusermount3 (auto_unmount), the order in which the last holders close
            // the connection and its socket decides whether it unmounts.
            logger.error("the supervisor is gone; the worker unmounts and stops")
            FuseMount(fd: -1, path: hello.mountPath).unmount()
            _exit(ExitStatus.failure.rawValue)
        }
        watcher.start()
        let server = FuseServer(core: core, mount: config.mount, logger: logger)
        do {
            try server.serve(fd: fuseFd, initRequest: hello.initRequest, reload: hello.reload) {
                channel.send(.serving)
                let reload = hello.reload
                Thread {
                    if !reload { probe() }
                    startWatches()
                }.start()
            }
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
    }
}
