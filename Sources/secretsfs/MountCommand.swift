import ArgumentParser
import FuseBridge
import SecretsCore

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount the secrets filesystem and serve it in the foreground.",
        discussion: """
            Mounts [mount] path (default /secrets) read-only and serves it until SIGINT or SIGTERM, then unmounts \
            and exits 0. With auto_unmount (the default) a killed daemon leaves no dead mount behind. A store that \
            fails (bad identity, tampered file) answers EIO for its own paths; the others keep serving. Under \
            systemd (NOTIFY_SOCKET set, Type=notify) it reports READY=1 once the mount is in place.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(name: .long, help: "Mount here instead of [mount] path.")
    var mountpoint: String?

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        var config = try Runtime.loadConfig(options.config)
        if let mountpoint { config.mount.path = mountpoint }
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let core = FileSystemCore(config: config, resolver: resolver, logger: logger)
        for name in resolver.topNames {
            // Say early which stores are broken; they still get their directory and answer EIO.
            do {
                let envs = try resolver.envs(top: name)
                logger.info("ready", metadata: ["store": "\(name)", "envs": "\(envs.count)"])
            } catch {
                logger.error("store failing; its paths answer EIO", metadata: ["store": "\(name)", "error": "\(error)"])
            }
        }
        for (name, store) in stores {
            let pushes = store.watch(locations: config.scopeLocations(of: name)) { core.storeChanged(name) }
            logger.debug("change notices", metadata: ["store": "\(name)", "push": "\(pushes)"])
        }
        defer { stores.values.forEach { $0.close() } }
        let server = FuseServer(core: core, mount: config.mount, logger: logger)
        let path = config.mount.path
        do {
            // Under systemd (Type=notify) units ordered after this one start once the mount is in place.
            try server.run(ready: { SystemdNotify.send("READY=1\nSTATUS=serving \(path)") })
        } catch {
            SystemdNotify.send("STATUS=failed: \(error)")
            printError("\(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        SystemdNotify.send("STOPPING=1")
    }
}
