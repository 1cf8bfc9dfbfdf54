import ArgumentParser
import Crypto
import CSIPlugin
import DaprGRPC
import Foundation
import FuseBridge
import Handover
import Locking
import Logging
import Prometheus
import SecretsCore
import StatusServer

/// A worker process: takes the handshake from its supervisor, builds stores and the core from the config it was
/// handed, says ready, adopts the node table, then serves the FUSE connection (and the status and Dapr listeners)
/// until the connection ends or the supervisor goes away.
struct Worker {
    let fuseFD: Int32
    let controlFD: Int32
    let logLevel: String
    /// The supervisor's in-flight page (protocol version 2), if it gave one.
    let inflightFD: Int32?
    /// The memfd of the workers' encrypted view snapshot (protocol version 2), if the supervisor gave one.
    let snapshotFD: Int32?

    /// Everything built from the config before the worker says ready.
    struct Prepared {
        var config: Config
        var stores: [String: any SecretStore]
        var resolver: Resolver
        var core: FileSystemCore
        var registry: PrometheusCollectorRegistry?
    }

    func run() -> ExitStatus {
        // Ctrl-C and SIGHUP are the supervisor's; a terminal's SIGINT must not take the worker down with it.
        signal(SIGINT, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        // SIGTERM (the supervisor stopping or retiring this worker): close the stores first (leased stores revoke
        // their leases), then exit. Taken by one thread; blocked before any other thread starts.
        // SIGUSR1 (reopen the audit log) gets its thread later: blocked now, so no thread started before then
        // (this SIGTERM one included) takes it with the default action.
        var later = sigset_t()
        sigemptyset(&later)
        sigaddset(&later, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &later, nil)
        let closing = StoresToClose()
        SignalThread.on(SIGTERM) {
            closing.stores.withLock { $0 }.forEach { $0.close() }
            _exit(0)
        }
        var logger = Runtime.bootstrapLogging(level: logLevel)
        logger[metadataKey: "worker"] = "\(getpid())"
        // The worker holds decrypted values for as long as it runs: keep them out of swap.
        if let problem = ProcessHardening.lockMemory() { logger.warning("\(problem)") }
        let channel: ControlChannel
        let hello: HandoverMessage.Hello
        do {
            (channel, hello) = try WorkerHandshake.accept(fd: controlFD)
        } catch {
            printError("\(error)")
            logger.error("handover refused", metadata: ["error": "\(error)"])
            return error.code == .unsupported ? .protocolMismatch : .failure
        }
        let prepared: Prepared
        do {
            prepared = try prepare(hello, logger: logger)
        } catch let exit as ExitCode {
            return ExitStatus(rawValue: exit.rawValue) ?? .failure
        } catch {
            printError("\(error)")
            return .invalidConfig
        }
        closing.stores.withLock { $0 = Array(prepared.stores.values) }
        let core = prepared.core
        // Last-known-good: the previous worker's views serve while their stores fail; ours are kept for the next.
        let snapshot = snapshotFD.map { SnapshotFile(fd: $0, digestKey: hello.digestKey, logger: logger) }
        let inherited = snapshot?.read()
        // The leased stores' leases outlive their worker: the previous worker's are renewed on, not minted again.
        let leasing = prepared.stores.values.compactMap { $0 as? any LeaseCarrying }
        if let inherited {
            core.inherit(inherited)
            for store in leasing { store.adopt(inherited.leases) }
            logger.info(
                "took over the previous worker's cached views; they serve only while their stores fail",
                metadata: [
                    "views": "\(inherited.views.count)", "listings": "\(inherited.listings.count)",
                    "leases": "\(inherited.leases.count)",
                ])
        }
        // [cache] persist: a mount's first worker (no snapshot yet) starts with the views kept on disk.
        let cache = prepared.config.cache
        if cache.persist != nil, cache.persistIdentity == nil {
            logger.warning(
                "[cache] persist is set but has no identity: set persist_identity, or pass the systemd credential \(CacheConfig.persistCredential); running without a persisted cache")
        }
        let persisted = cache.persist.flatMap { path in
            cache.persistIdentity.flatMap {
                PersistedCache(path: path, identityPath: $0, config: prepared.config, logger: logger)
            }
        }
        if inherited == nil, let persisted, let kept = persisted.read() {
            core.inherit(kept)
            logger.info(
                "took the persisted cache's views; they serve only while their stores cannot be reached",
                metadata: ["views": "\(kept.views.count)", "listings": "\(kept.listings.count)", "path": "\(persisted.path)"])
        }
        if snapshot != nil || persisted != nil {
            core.onCacheChange {
                snapshot?.changed(core, leasing: leasing)
                persisted?.changed(core)
            }
        }
        if let snapshot {
            for store in leasing { store.onLeasesChange { snapshot.changed(core, leasing: leasing) } }
        }
        let probe: @Sendable () -> Void = { [logger, resolver = prepared.resolver] in
            Self.probeStores(core, resolver, logger: logger)
        }
        // Say which stores are broken (they still get their directories and answer EIO). On a reload this runs while
        // the old worker still serves, warming connections; after a crash it runs once this worker serves, so a hung
        // backend never delays the failover.
        if hello.reload { probe() }
        channel.send(.ready)
        guard let (records, nextInode) = WorkerHandshake.receiveTable(channel) else {
            logger.info("the supervisor retired this worker before it served")
            return .success
        }
        let key = SymmetricKey(data: hello.digestKey)
        let digest: @Sendable (SecretBytes) -> [UInt8] = { bytes in
            bytes.withUnsafeBytes { Array(HMAC<SHA256>.authenticationCode(for: $0, using: key)) }
        }
        core.adopt(records, nextInode: nextInode, handoff: NodeHandoff(journal: channel, digest: digest))
        logger.debug("took over the node table", metadata: ["nodes": "\(records.count)", "next": "\(nextInode)"])
        defer { prepared.stores.values.forEach { $0.close() } }
        // Only now, with the previous worker gone: it held the listening addresses until then.
        startListeners(prepared, logger: logger)
        watchSupervisor(channel, mountPath: hello.mountPath, logger: logger)
        let server = FuseServer(
            core: core, mount: prepared.config.mount, logger: logger, inflight: inflightFD.flatMap(InflightStamps.map))
        let serving = logger
        do {
            try server.serve(fd: fuseFD, initRequest: hello.initRequest, reload: hello.reload) {
                channel.send(.serving)
                let reload = hello.reload
                // The CSI plugin's publishes walk this mount: it starts once the connection is served.
                if let csi = prepared.config.csi {
                    if channel.version >= HandoverProtocol.csiVolumes {
                        CSIPlugin.start(
                            core: core, config: csi, mountPath: hello.mountPath,
                            version: "handover-\(HandoverProtocol.current)", ready: { true }, logger: serving)
                    } else {
                        serving.error(
                            "[csi] needs handover protocol \(HandoverProtocol.csiVolumes); the supervisor speaks \(channel.version): CSI stays off until it is upgraded")
                    }
                }
                Thread {
                    if !reload { probe() }
                    // Change notices start once this worker serves (subscribing may wait on a backend).
                    Self.startWatches(prepared, core: core, logger: serving)
                }.start()
            }
        } catch {
            printError("\(error)")
            return .failure
        }
        // The session loop ends only when the connection does (unmounted from outside, or aborted).
        return .connectionEnded
    }

    /// The config, stores, resolver, audit log and core.
    /// Errors are printed here (ExitCode) or are config errors.
    func prepare(_ hello: HandoverMessage.Hello, logger: Logger) throws -> Prepared {
        var config = try Config.parse(text: hello.configText, file: hello.configPath)
        if config.mount.noOpen != hello.noOpen {
            logger.warning("no_open is fixed for the life of the mount; keeping \(hello.noOpen)")
        }
        config.mount.noOpen = hello.noOpen
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let audit = config.audit.enabled ? try AuditLog(config: config.audit, logger: logger) : nil
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
        SignalThread.on(SIGUSR1) { audit?.reopen() }
        return Prepared(config: config, stores: stores, resolver: resolver, core: core, registry: registry)
    }

    static func probeStores(_ core: FileSystemCore, _ resolver: Resolver, logger: Logger) {
        for name in resolver.topNames {
            do {
                let envs = try core.probe(name)
                logger.info("ready", metadata: ["store": "\(name)", "envs": "\(envs.count)"])
            } catch {
                logger.error("store failing; its paths answer EIO", metadata: ["store": "\(name)", "error": "\(error)"])
            }
        }
    }

    static func startWatches(_ prepared: Prepared, core: FileSystemCore, logger: Logger) {
        for (name, store) in prepared.stores {
            let pushes = store.watch(locations: prepared.config.scopeLocations(of: name)) { changes in
                core.storeChanged(name, changes)
            }
            logger.debug("change notices", metadata: ["store": "\(name)", "push": "\(pushes)"])
        }
    }

    func startListeners(_ prepared: Prepared, logger: Logger) {
        if let listen = prepared.config.metrics, let registry = prepared.registry {
            StatusServer.start(listen: listen, core: prepared.core, registry: registry, logger: logger)
        }
        guard let api = prepared.config.api else { return }
        var token: String?
        if let file = api.tokenFile {
            do {
                token = try FileIO.readText(file).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                logger.error("the Dapr API token file cannot be read; the API stays off", metadata: ["error": "\(error)"])
                return
            }
        }
        let secrets = SecretsAPI(config: api, core: prepared.core, token: token)
        if let listen = api.daprHTTP { DaprAPI.start(secrets, listen: listen, logger: logger) }
        if let listen = api.daprGRPC { DaprGRPC.start(secrets, listen: listen, logger: logger) }
    }

    /// The supervisor going away ends the worker: nothing would restart it, and the mount goes with them.
    func watchSupervisor(_ channel: ControlChannel, mountPath: String, logger: Logger) {
        Thread {
            while true {
                if case .closed = channel.receive() { break }
            }
            // Unmount before leaving: left to fusermount3 (auto_unmount), the order in which the last holders close
            // the connection and its socket decides whether it unmounts.
            logger.error("the supervisor is gone; the worker unmounts and stops")
            FuseMount(fd: -1, path: mountPath).unmount()
            _exit(ExitStatus.failure.rawValue)
        }.start()
    }
}

/// The stores a SIGTERM closes before the worker exits (set once they are built).
final class StoresToClose: Sendable {
    let stores = Locked<[any SecretStore]>([])
}

/// Runs a body on a thread of its own each time a signal arrives (blocked everywhere else; threads started after
/// this inherit the mask).
enum SignalThread {
    static func on(_ signal: Int32, _ body: @escaping @Sendable () -> Void) {
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
}
