import ArgumentParser
import Glibc
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
        // `get` is a way in like the mount: audited paths are recorded the same way.
        let policy = AccessPolicy(config: config)
        let audit: AuditLog?
        do {
            audit = config.audit.enabled ? try AuditLog(config: config.audit, logger: logger) : nil
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        func record(_ decision: AuditEntry.Decision, env: String) {
            guard let audit, policy.isAudited(top: parts[0], env: env, key: parts[2]) else { return }
            let caller = Caller.current
            audit.record(
                AuditEntry(
                    via: "get", path: "\(parts[0])/\(env)/\(parts[2])", decision: decision, caller: caller,
                    details: CallerDetails.read(pid: caller.pid), cache: decision == .allowed ? "fresh" : nil))
        }
        do throws(SecretsError) {
            guard resolver.tops[parts[0]] != nil else {
                throw SecretsError(.notFound, "no store or scope named '\(parts[0])'")
            }
            guard let env = try resolver.canonicalEnv(top: parts[0], env: parts[1]) else {
                throw SecretsError(.notFound, "no env '\(parts[1])' in '\(parts[0])'")
            }
            guard policy.allows(Caller.current, top: parts[0], env: env, key: parts[2], details: {
                CallerDetails.read(pid: getpid())
            }) else {
                record(.denied, env: env)
                throw SecretsError(.permissionDenied, "an access rule does not allow this caller to read '\(path)'")
            }
            guard let value = try resolver.resolve(top: parts[0], env: env, key: parts[2]) else {
                record(.notFound, env: env)
                throw SecretsError(.notFound, "no key '\(parts[2])' in '\(parts[0])/\(env)'")
            }
            record(.allowed, env: env)
            writeStdout(value.fileBytes().copyBytes())
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }
}
