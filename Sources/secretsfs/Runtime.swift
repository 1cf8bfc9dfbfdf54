import ArgumentParser
import FileStore
import Foundation
import Logging
import SecretsCore

/// Options every config-reading command shares.
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "The config file.")
    var config: String = "/etc/secretsfs/config.toml"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"
}

/// Builds what the commands need from a config: logging, stores, the resolver.
enum Runtime {
    static func bootstrapLogging(level: String) -> Logger {
        let parsed = Logger.Level(rawValue: level) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = parsed
            return handler
        }
        return Logger(label: "secretsfs")
    }

    /// Loads the config; a malformed one is reported as file:line:column and exits 2.
    static func loadConfig(_ path: String) throws -> Config {
        do {
            return try Config.load(path: path)
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
    }

    /// Builds every store (see `StoreRegistry`); a bad one exits 2 with its location.
    static func buildStores(_ config: Config, logger: Logger) throws -> [String: any SecretStore] {
        try StoreRegistry.buildStores(config, logger: logger)
    }

    static func resolver(_ config: Config, stores: [String: any SecretStore]) throws -> Resolver {
        do {
            return try Resolver(config: config, stores: stores)
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
    }

    /// The file store named `name`, for the commands that write files.
    static func fileStore(_ name: String, config: Config, logger: Logger) throws -> FileStore {
        guard let storeConfig = config.store(named: name) else {
            printError("no store named '\(name)' in \(config.file)")
            throw ExitCode(ExitStatus.notFound.rawValue)
        }
        guard storeConfig.type == "file" else {
            printError("store '\(name)' is of type \(storeConfig.type); this command works on file stores")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        do {
            return try FileStore(config: storeConfig, logger: logger)
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
    }

    /// For `edit` and `set`: the file store and the file to change (`--file`, else the store's last file).
    /// The file store and the file to change: `file` when given, else for a write to `env` the file a read of that
    /// env looks at first, else (edit) the store's last file.
    static func fileStoreTarget(_ options: ConfigOptions, store: String, file: String?, env: String? = nil) throws
        -> (FileStore, String)
    {
        let logger = bootstrapLogging(level: options.logLevel)
        let config = try loadConfig(options.config)
        let fileStore = try fileStore(store, config: config, logger: logger)
        if let file {
            // One of the store's own files: as given (from here), or as the config names it (from its folder).
            let configFolder = (FileIO.absolute(options.config, in: FileManager.default.currentDirectoryPath) as NSString)
                .deletingLastPathComponent
            let candidates = [
                FileIO.absolute(file, in: FileManager.default.currentDirectoryPath), FileIO.absolute(file, in: configFolder),
            ]
            func normal(_ path: String) -> String {
                (FileIO.absolute(path, in: FileManager.default.currentDirectoryPath) as NSString).standardizingPath
            }
            let wanted = Set(candidates.map(normal))
            guard let match = fileStore.settings.files.first(where: { wanted.contains(normal($0)) }) else {
                throw ValidationError(
                    "--file \(file) is not one of store '\(store)''s files: \(fileStore.settings.files.joined(separator: ", "))")
            }
            return (fileStore, match)
        }
        guard let env else { return (fileStore, fileStore.primaryFile) }
        do {
            return (fileStore, try fileStore.writeTarget(env: env))
        } catch {
            printError(error.description)
            throw exitCode(for: error)
        }
    }

    static func exitCode(for error: SecretsError) -> ExitCode {
        switch error.code {
        case .notFound: return ExitCode(ExitStatus.notFound.rawValue)
        case .invalidConfig: return ExitCode(ExitStatus.invalidConfig.rawValue)
        default: return ExitCode(ExitStatus.failure.rawValue)
        }
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data(("secretsfs: " + message + "\n").utf8))
}

func writeStdout(_ bytes: [UInt8]) {
    FileHandle.standardOutput.write(Data(bytes))
}

/// Reads all of standard input.
func readStandardInput() -> [UInt8] {
    [UInt8](FileHandle.standardInput.readDataToEndOfFile())
}
