import Foundation
import SecretsCore
import Yams

/// Parses the plaintext of a secrets file into envs. Errors say where, never what the text was.
enum SecretsDocument {
    enum Format: String {
        case toml, json, yaml, dotenv, ini

        /// The SOPS flavour of the format (TOML has none).
        var sops: Sops.Format? {
            switch self {
            case .toml: nil
            case .json: .json
            case .yaml: .yaml
            case .dotenv: .dotenv
            case .ini: .ini
            }
        }
    }

    /// The inner format from the file name: `.age` is stripped, then `.json`, `.yaml`/`.yml`, `.env` (or a name
    /// starting `.env`), `.ini`, anything else TOML.
    static func format(of path: String) -> Format {
        var name = path.lowercased()
        if name.hasSuffix(".age") { name.removeLast(4) }
        let base = name.split(separator: "/").last.map(String.init) ?? name
        if name.hasSuffix(".json") { return .json }
        if name.hasSuffix(".yaml") || name.hasSuffix(".yml") { return .yaml }
        if name.hasSuffix(".env") || base.hasPrefix(".env") { return .dotenv }
        if name.hasSuffix(".ini") { return .ini }
        return .toml
    }

    /// Top-level entries as envs: with `envs`, each must be a table (an env); with `flat`, they are the keys of one env.
    static func envs(_ entries: [(String, SecretValue)], layout: FileLayout, file: String) throws(SecretsError)
        -> [String: [String: SecretValue]]
    {
        switch layout {
        case .flat(let env):
            var fields: [String: SecretValue] = [:]
            for (key, value) in entries { fields[key] = value }
            return [env: fields]
        case .envs:
            var envs: [String: [String: SecretValue]] = [:]
            for (env, section) in entries {
                guard case .table(let fields) = section else {
                    throw SecretsError(
                        .invalidData,
                        "\(file): top-level key '\(env)' is not an env table; put keys under default:, production:, ... or set layout = \"flat\" with env = \"...\"")
                }
                envs[env.lowercased(), default: [:]].merge(fields) { _, new in new }
            }
            return envs
        }
    }

    /// A plain (not SOPS) dotenv document, as sops reads one: `KEY=VALUE` lines, keys as written, values after the
    /// first `=` as written (quotes kept), `\n` turned into a newline; `#` lines are comments.
    static func dotenv(_ text: String) -> [(String, SecretValue)] {
        var out: [(String, SecretValue)] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let value = String(line[line.index(after: equals)...]).replacingOccurrences(of: "\\n", with: "\n")
            out.append((String(line[..<equals]), .string(value)))
        }
        return out
    }

    /// envs (lower-case) -> keys -> values.
    static func parse(_ text: String, format: Format, layout: FileLayout = .envs, file: String) throws(SecretsError)
        -> [String: [String: SecretValue]]
    {
        switch format {
        case .dotenv:
            return try envs(dotenv(text), layout: layout, file: file)
        case .ini:
            let sections = Sops.iniSections(text).map { name, pairs -> (String, SecretValue) in
                var table: [String: SecretValue] = [:]
                for (key, value) in pairs { table[key] = .string(value) }
                return (name, .table(table))
            }
            return try envs(sections, layout: layout, file: file)
        default:
            break
        }
        let root: [String: SecretValue]
        switch format {
        case .toml:
            do {
                root = try TOMLDocument.parseQuietly(file: file, text: text).root
            } catch {
                throw SecretsError(.invalidData, "\(error.location): TOML syntax error")
            }
        case .json:
            var parser = JSONParser(Array(text.utf8))
            guard case .table(let table)? = try? parser.parseDocument() else {
                throw SecretsError(.invalidData, "\(file):\(parser.line): not a valid JSON object")
            }
            root = table
        case .dotenv, .ini:
            root = [:]
        case .yaml:
            let node: Node?
            do {
                node = try Yams.compose(yaml: text)
            } catch {
                throw SecretsError(.invalidData, "\(file): not valid YAML")
            }
            guard let node, case .table(let table) = yamlValue(node) else {
                throw SecretsError(.invalidData, "\(file): the YAML document must be a mapping of envs")
            }
            root = table
        }
        return try envs(root.map { ($0.key, $0.value) }, layout: layout, file: file)
    }

    static func yamlValue(_ node: Node) -> SecretValue {
        switch node {
        case .scalar(let scalar):
            // Quoted scalars are strings; plain ones resolve as YAML 1.1 does (as PyYAML, which Dynaconf uses).
            guard scalar.style == .plain else { return .string(scalar.string) }
            if NSNull.construct(from: scalar) != nil { return .null }
            if let flag = Bool.construct(from: scalar) { return .bool(flag) }
            if let number = Int.construct(from: scalar) { return .int(Int64(number)) }
            if let number = Double.construct(from: scalar) { return .float(number) }
            return .string(scalar.string)
        case .mapping(let mapping):
            var table: [String: SecretValue] = [:]
            for (key, value) in mapping {
                table[key.string ?? ""] = yamlValue(value)
            }
            return .table(table)
        case .sequence(let sequence):
            return .array(sequence.map(yamlValue))
        case .alias:
            return .null
        }
    }
}

