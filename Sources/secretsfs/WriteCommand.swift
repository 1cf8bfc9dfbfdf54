import ArgumentParser
import SecretsCore

struct WriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write",
        abstract: "Write keys into one env of a store, merging with what is there (Vault, Redis, file stores).",
        discussion: """
            Example: secretsfs write --config c.toml redis -e production NAME=Bruno PORT=1234 --typed
            Vault: the env's secret is read and written back with the new keys (KV v2 with check-and-set, retried \
            when someone wrote in between); values are strings unless --json (each value parsed as JSON) or \
            --typed. Redis: HSET (MULTI/EXEC). File stores: like `set` (TOML), values of any type.
            A scope takes --level: the write goes to that level's store and location (file, Vault or Redis). \
            --delete KEY removes a key at that level, so the next level's value shows through. --json stores \
            objects and arrays as structured data (TOML table, Vault JSON, Redis @json), read back as compact JSON.
            Values are strings unless --typed, which stores integers, floats, true/false, null and JSON arrays or \
            objects with Dynaconf's Redis type tokens (@int 1234, @float 1.5, @bool True, @none, @json {...}), reading \
            numbers as TOML does (007 stays the string 007). A string starting with @ is stored as @str so it is \
            never read as a token. Unlike Dynaconf's Vault writer, \
            existing keys of the env are kept. A bare KEY reads its value from standard input (one trailing \
            newline removed).
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The store's or scope's name.")
    var store: String

    @Option(name: [.customShort("e"), .long], help: "The env to write into, e.g. production or default.")
    var env: String

    @Option(name: .long, help: "For a scope: the level to write at (its chain element's store and location).")
    var level: String?

    @Argument(help: "KEY=VALUE pairs, or one bare KEY to read its value from standard input.")
    var assignments: [String] = []

    @Flag(name: .long, help: "Store typed values (Redis: Dynaconf's tokens; Vault: JSON numbers, booleans, null).")
    var typed = false

    @Flag(name: .long, help: "Parse each value as JSON (1234, true, {\"a\":1}, \"text\"); objects stay structured.")
    var json = false

    @Option(name: .long, help: "Remove this key at that level (the next level's value then shows); repeatable.")
    var delete: [String] = []

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let target = try LevelWriter(config: config, name: store, level: level)
        guard !assignments.isEmpty || !delete.isEmpty else {
            throw LevelWriter.fail("nothing to write: give KEY=VALUE pairs or --delete KEY", .invalidConfig)
        }
        let values = assignments.isEmpty ? [] : try Assignments.parse(assignments)
        do throws(SecretsError) {
            var set: [(String, SecretValue)] = []
            for (key, text) in values {
                if json {
                    guard let value = SecretValue.parseJSON(Array(text.utf8)) else {
                        throw SecretsError(.invalidArgument, "the value of \(key) is not JSON")
                    }
                    set.append((key, value))
                } else {
                    set.append((key, typed ? Self.typedValue(text) : .string(text)))
                }
            }
            try target.apply(env: env, set: set, remove: delete, replace: false, logger: logger)
            let names = (values.map(\.0) + delete.map { "-" + $0 }).joined(separator: ", ")
            printError("wrote \(names) to \(target.description)/\(env.lowercased())")
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
