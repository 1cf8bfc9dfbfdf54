import Foundation
import SecretsCore
import Yams

/// Parses the plaintext of a secrets file into envs. Errors say where, never what the text was.
enum SecretsDocument {
    enum Format: String {
        case toml, json, yaml
    }

    /// The inner format from the file name: `.age` is stripped, then `.json`, `.yaml`/`.yml`, anything else TOML.
    static func format(of path: String) -> Format {
        var name = path.lowercased()
        if name.hasSuffix(".age") { name.removeLast(4) }
        if name.hasSuffix(".json") { return .json }
        if name.hasSuffix(".yaml") || name.hasSuffix(".yml") { return .yaml }
        return .toml
    }

    /// envs (lower-case) -> keys -> values.
    static func parse(_ text: String, format: Format, file: String) throws(SecretsError) -> [String: [String: SecretValue]] {
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
        var envs: [String: [String: SecretValue]] = [:]
        for (env, section) in root {
            guard case .table(let fields) = section else {
                throw SecretsError(
                    .invalidData,
                    "\(file): top-level key '\(env)' is not an env table; put keys under [default], [production], ...")
            }
            envs[env.lowercased(), default: [:]].merge(fields) { _, new in new }
        }
        return envs
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

