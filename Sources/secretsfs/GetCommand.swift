import ArgumentParser
import SecretsCore

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Print one secret's exact bytes, resolved as the filesystem would, without mounting.",
        discussion: """
            PATH is <store-or-scope>/<env>/<key>, for example local/production/PASSWORD. The bytes are written to \
            standard output exactly, with no newline added. Exit 3 when the store, env or key does not exist (for a \
            scope: at no level). --explain prints instead which level, store and env serve the key and which lower \
            levels also hold it (shadowed), and whether it is fresh or cached; never the value. On the mount the same \
            shows as the extended attribute user.secretsfs.source.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "<store-or-scope>/<env>/<key>")
    var path: String

    @Flag(name: .long, help: "Print where the value comes from (level, store, env; shadowed levels), never the value.")
    var explain = false

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard parts.count == 3 else {
            printError("path must be <store-or-scope>/<env>/<key>")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        // `get` is a way in like the mount: access rules apply and audited paths are recorded the same way.
        let reader = try AuditedReader(config: config, resolver: resolver, logger: logger, via: "get")
        do throws(SecretsError) {
            let env = try reader.env(top: parts[0], env: parts[1])
            if explain {
                let sources = try resolver.sources(top: parts[0], env: env, key: parts[2])
                guard let served = sources.first else {
                    throw SecretsError(.notFound, "no key '\(parts[2])' at any level of '\(parts[0])/\(env)'")
                }
                let kind = resolver.isFresh(top: parts[0], key: parts[2])
                    ? "fresh: fetched on every open" : "cached: served from the cache for up to \(Int(config.cache.ttl)) s"
                print("\(parts[0])/\(env)/\(parts[2]): served by \(served); \(kind)")
                for shadowed in sources.dropFirst() { print("  shadowed: \(shadowed)") }
                return
            }
            writeStdout(try reader.read(top: parts[0], env: env, key: parts[2]).copyBytes())
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }
}
