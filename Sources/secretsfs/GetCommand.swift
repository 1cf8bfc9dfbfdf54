import ArgumentParser
import SecretsCore

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Print one secret's exact bytes, resolved as the filesystem would, without mounting.",
        discussion: """
            PATH is <store-or-scope>/<env>/<key>, for example local/production/PASSWORD. The bytes are written to \
            standard output exactly, with no newline added. Exit 3 when the store, env or key does not exist.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "<store-or-scope>/<env>/<key>")
    var path: String

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
            writeStdout(try reader.read(top: parts[0], env: env, key: parts[2]).copyBytes())
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }
}
