import ArgumentParser
import EnvStore
import FileStore
import Logging
import RedisStore
import SecretsCore
import VaultStore

/// The one place that knows every store type: how each `type` is built from its `[stores.<name>]` table (each store
/// reads its own keys), and which can be written. Used by mount (the worker), get, run, set, write, import, edit.
enum StoreRegistry {
    typealias Maker = @Sendable (StoreConfig, Logger) throws(LocatedError) -> any SecretStore

    static let makers: [String: Maker] = [
        "file": { config, logger throws(LocatedError) in try FileStore(config: config, logger: logger) },
        "redis": { config, logger throws(LocatedError) in try RedisStore(config: config, logger: logger) },
        "vault": { config, logger throws(LocatedError) in try VaultStore(config: config, logger: logger) },
        "vault-database": { config, logger throws(LocatedError) in try LeasedStore(config: config, logger: logger) },
        "vault-pki": { config, logger throws(LocatedError) in try LeasedStore(config: config, logger: logger) },
        "env": { config, _ throws(LocatedError) in try EnvStore(config: config) },
    ]

    /// One store; an unknown type is an error at its `type` key.
    static func make(_ config: StoreConfig, logger: Logger) throws(LocatedError) -> any SecretStore {
        guard let make = makers[config.type] else {
            let known = makers.keys.sorted().joined(separator: ", ")
            throw config.section.error("type", "unknown store type '\(config.type)' (known: \(known))")
        }
        return try make(config, logger)
    }

    /// One store to write to; a store type that cannot be written says so.
    static func writable(_ config: StoreConfig, logger: Logger) throws(SecretsError) -> any WritableSecretStore {
        let store: any SecretStore
        do {
            store = try make(config, logger: logger)
        } catch {
            throw SecretsError(.invalidConfig, error.description)
        }
        guard let writable = store as? any WritableSecretStore else {
            store.close()
            throw SecretsError(.unsupported, "store '\(config.name)' of type \(config.type) cannot be written")
        }
        return writable
    }

    /// Every store of the config; a bad one exits 2 with its location.
    static func buildStores(_ config: Config, logger: Logger) throws -> [String: any SecretStore] {
        var stores: [String: any SecretStore] = [:]
        for storeConfig in config.stores {
            do {
                stores[storeConfig.name] = try make(storeConfig, logger: logger)
            } catch {
                printError("\(error)")
                stores.values.forEach { $0.close() }
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
        }
        return stores
    }
}
