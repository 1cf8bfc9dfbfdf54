import ArgumentParser
import Logging
import SecretsCore

/// Where `write`, `set --level`, `import` and `--delete` write: a store's own location, or one level of a scope
/// (that element's store at that element's location), whatever kind of store it is.
struct LevelWriter {
    let storeConfig: StoreConfig
    let location: String?
    let description: String

    /// `name` is a store or a scope; a scope needs `level`, and an error lists its levels.
    init(config: Config, name: String, level: String?) throws {
        if let scope = config.scopes.first(where: { $0.name == name }) {
            let levels = scope.chain.map(\.level)
            guard let level else {
                throw LevelWriter.fail("'\(name)' is a scope: say which level to write with --level (\(levels.joined(separator: ", ")))", .invalidConfig)
            }
            guard let element = scope.chain.first(where: { $0.level == level }),
                let storeConfig = config.store(named: element.store)
            else {
                throw LevelWriter.fail("scope '\(name)' has no level '\(level)' (levels: \(levels.joined(separator: ", ")))", .notFound)
            }
            self.storeConfig = storeConfig
            location = element.path
            description = "\(name) level \(level) (store \(element.store))"
        } else if let storeConfig = config.store(named: name) {
            if let level, level != name {
                throw LevelWriter.fail("'\(name)' is a store, not a scope: it has no level '\(level)'", .invalidConfig)
            }
            self.storeConfig = storeConfig
            location = nil
            description = name
        } else {
            throw LevelWriter.fail("no store or scope named '\(name)' in \(config.file)", .notFound)
        }
    }

    static func fail(_ message: String, _ status: ExitStatus) -> ExitCode {
        printError(message)
        return ExitCode(status.rawValue)
    }

    /// Sets, removes or (with `replace`) replaces keys of one env in one write.
    func apply(env: String, set: [(String, SecretValue)], remove: [String], replace: Bool, logger: Logger)
        throws(SecretsError)
    {
        for key in set.map(\.0) + remove {
            if let problem = EntryName.problem(key) {
                throw SecretsError(.invalidArgument, "a key must be usable as a file name; one is \(problem)")
            }
        }
        let store = try StoreRegistry.writable(storeConfig, logger: logger)
        defer { store.close() }
        try store.update(env: env, at: location, set: set, remove: remove, replace: replace)
    }
}
