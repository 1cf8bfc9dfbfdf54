import ArgumentParser
import FileStore
import RedisStore
import VaultStore
import SecretsCore

struct WriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write keys into one env of a store, merging with what is there (Vault, Redis, file stores).",
        discussion: """
            Example: secretsfs write --config c.toml redis -e production NAME=Bruno PORT=1234 --typed
            Vault: the env's secret is read and written back with the new keys (KV v2 with check-and-set, retried \
            when someone wrote in between); values are strings unless --json (each value parsed as JSON) or \
            --typed. Redis: HSET. File stores: like `set`.
            Values are strings unless --typed, which stores integers, floats, true/false, null and JSON arrays or \
            objects with Dynaconf's Redis type tokens (@int 1234, @float 1.5, @bool True, @none, @json {...}), reading \
            numbers as TOML does (007 stays the string 007). A string starting with @ is stored as @str so it is \
            never read as a token. Unlike Dynaconf's Vault writer, \
            existing keys of the env are kept. A bare KEY reads its value from standard input (one trailing \
            newline removed).
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The store's name.")
    var store: String

    @Option(name: [.customShort("e"), .long], help: "The env to write into, e.g. production or default.")
    var env: String

    @Argument(help: "KEY=VALUE pairs, or one bare KEY to read its value from standard input.")
    var assignments: [String]

    @Flag(name: .long, help: "Store typed values (Redis: Dynaconf's tokens; Vault: JSON numbers, booleans, null).")
    var typed = false

    @Flag(name: .long, help: "Vault: parse each value as JSON (1234, true, {\"a\":1}, \"text\").")
    var json = false

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        guard let storeConfig = config.store(named: store) else {
            printError("no store named '\(store)' in \(config.file)")
            throw ExitCode(ExitStatus.notFound.rawValue)
        }
        let values = try Assignments.parse(assignments)
        let fileStore = storeConfig.type == "file" ? try Runtime.fileStore(store, config: config, logger: logger) : nil
        do throws(SecretsError) {
            switch storeConfig.type {
            case "redis":
                let redis: RedisStore
                do {
                    redis = try RedisStore(config: storeConfig, logger: logger)
                } catch {
                    throw SecretsError(.invalidConfig, error.description)
                }
                defer { redis.close() }
                let encoded = values.map { key, text in
                    (key, Array((typed ? DynaconfTokens.encode(Self.typedValue(text)) : text).utf8))
                }
                try redis.write(env: env, fields: encoded)
            case "vault":
                let vault: VaultStore
                do {
                    vault = try VaultStore(config: storeConfig, logger: logger)
                } catch {
                    throw SecretsError(.invalidConfig, error.description)
                }
                defer { vault.close() }
                var typedValues: [(String, SecretValue)] = []
                for (key, text) in values {
                    if json {
                        guard let value = SecretValue.parseJSON(Array(text.utf8)) else {
                            throw SecretsError(.invalidArgument, "the value of \(key) is not JSON")
                        }
                        typedValues.append((key, value))
                    } else {
                        typedValues.append((key, typed ? Self.typedValue(text) : .string(text)))
                    }
                }
                try vault.write(env: env, values: typedValues)
            case "file":
                guard let fileStore else { throw SecretsError(.invalidConfig, "store '\(store)' is not a file store") }
                try fileStore.setKeys(values, env: env, in: fileStore.primaryFile)
            default:
                throw SecretsError(.unsupported, "store '\(store)' of type \(storeConfig.type) cannot be written")
            }
            printError("wrote \(values.map(\.0).joined(separator: ", ")) to \(store)/\(env.lowercased())")
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }

    /// How --typed reads a value: TOML-like scalars and JSON arrays/objects; anything else stays a string.
    static func typedValue(_ text: String) -> SecretValue {
        // TOML's integer rule, as Dynaconf parses values: no leading zeros, so "007" stays a string.
        let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
        if let number = Int64(text), digits == "0" || !digits.hasPrefix("0") { return .int(number) }
        if text.contains("."), let number = Double(text), number.isFinite { return .float(number) }
        switch text {
        case "true", "True": return .bool(true)
        case "false", "False": return .bool(false)
        case "null", "None": return .null
        default: break
        }
        if text.hasPrefix("[") || text.hasPrefix("{"), let value = SecretValue.parseJSON(Array(text.utf8)) {
            return value
        }
        return .string(text)
    }
}

/// KEY=VALUE arguments, with at most one bare KEY whose value comes from standard input.
enum Assignments {
    static func parse(_ assignments: [String]) throws -> [(String, String)] {
        var values: [(String, String)] = []
        var usedStdin = false
        for assignment in assignments {
            if let equals = assignment.firstIndex(of: "=") {
                values.append((String(assignment[..<equals]), String(assignment[assignment.index(after: equals)...])))
                continue
            }
            guard !usedStdin else {
                printError("only one key can read its value from standard input")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
            usedStdin = true
            var bytes = readStandardInput()
            if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                printError("the value on standard input is not UTF-8 text")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
            values.append((assignment, text))
        }
        for (key, _) in values {
            if let problem = EntryName.problem(key) {
                printError("a key must be usable as a file name; this one is \(problem)")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
        }
        return values
    }
}
