import Age
import Crypto
import Foundation
import SecretsCore
import Yams

/// Changing a SOPS file the way sops does: new and changed values encrypted under the file's own data key with new
/// random IVs (values not touched keep their ciphertext), the MAC and `lastmodified` recomputed, recipients and
/// options kept, so `sops -d`, `sops edit` and `sops updatekeys` keep working on it.
extension Sops {
    /// Which keys sops encrypts: `unencrypted_suffix` (default `_unencrypted`), `encrypted_suffix`,
    /// `unencrypted_regex`, `encrypted_regex`, applied to every key on a value's path.
    struct Rules {
        var unencryptedSuffix: String?
        var encryptedSuffix: String?
        var unencryptedRegex: NSRegularExpression?
        var encryptedRegex: NSRegularExpression?

        init(_ options: [String: String]) {
            unencryptedSuffix = options["unencrypted_suffix"]
            encryptedSuffix = options["encrypted_suffix"]
            unencryptedRegex = options["unencrypted_regex"].flatMap { try? NSRegularExpression(pattern: $0) }
            encryptedRegex = options["encrypted_regex"].flatMap { try? NSRegularExpression(pattern: $0) }
            if unencryptedSuffix == nil && encryptedSuffix == nil && unencryptedRegex == nil && encryptedRegex == nil {
                unencryptedSuffix = "_unencrypted"
            }
        }

        func encrypts(_ path: [String]) -> Bool {
            func matches(_ regex: NSRegularExpression, _ key: String) -> Bool {
                regex.firstMatch(in: key, range: NSRange(key.startIndex..., in: key)) != nil
            }
            if let suffix = unencryptedSuffix, path.contains(where: { $0.hasSuffix(suffix) }) { return false }
            if let suffix = encryptedSuffix { return path.contains { $0.hasSuffix(suffix) } }
            if let regex = unencryptedRegex, path.contains(where: { matches(regex, $0) }) { return false }
            if let regex = encryptedRegex { return path.contains { matches(regex, $0) } }
            return true
        }
    }

    /// A value's plaintext and sops type: strings as they are, booleans `True`/`False` as sops stores them.
    static func plaintext(_ value: SecretValue) -> ([UInt8], String) {
        switch value {
        case .string(let text): return (Array(text.utf8), "str")
        case .bytes(let raw): return (raw, "str")
        case .int(let number): return (Array(String(number).utf8), "int")
        case .float(let number): return (Array(plainFloat(number).utf8), "float")
        case .bool(let flag): return (Array((flag ? "True" : "False").utf8), "bool")
        case .datetime(let text): return (Array(text.utf8), "time")
        case .null, .array, .table: return (Array(value.fileBytes().utf8String()?.utf8 ?? "".utf8), "str")
        }
    }

    /// A value as YAML nodes, every leaf encrypted (or left clear where the rules say), under `path`.
    static func yamlNode(_ value: SecretValue, path: [String], key: [UInt8], rules: Rules) throws -> Yams.Node {
        switch value {
        case .table(let fields):
            var pairs: [(Yams.Node, Yams.Node)] = []
            for name in fields.keys.sorted() {
                guard let field = fields[name] else { continue }
                pairs.append((Yams.Node(name), try yamlNode(field, path: path + [name], key: key, rules: rules)))
            }
            return .mapping(Yams.Node.Mapping(pairs))
        case .array(let items):
            return .sequence(Yams.Node.Sequence(try items.map { try yamlNode($0, path: path, key: key, rules: rules) }))
        case .null:
            return Yams.Node("null", Tag(.null))
        case .string(let text) where text.isEmpty:
            return Yams.Node("", Tag(.str), .doubleQuoted)
        default:
            var (bytes, type) = plaintext(value)
            defer { wipe(&bytes) }
            guard rules.encrypts(path) else {
                switch value {
                case .int: return Yams.Node(String(decoding: bytes, as: UTF8.self), Tag(.int))
                case .float: return Yams.Node(String(decoding: bytes, as: UTF8.self), Tag(.float))
                case .bool(let flag): return Yams.Node(flag ? "true" : "false", Tag(.bool))
                default: return Yams.Node(String(decoding: bytes, as: UTF8.self), Tag(.str), .doubleQuoted)
                }
            }
            return Yams.Node(try encryptValue(bytes, type: type, key: key, aad: path.joined(separator: ":") + ":"))
        }
    }

    /// `lastmodified` as sops writes it: UTC, whole seconds.
    static func now() -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date())
    }

    /// The MAC of a document body (decrypting it again: what is hashed is what a reader would check) and the
    /// encrypted form stored in the metadata.
    static func mac(of body: [(String, Node)], key: [UInt8], macOnlyEncrypted: Bool, lastModified: String, file: String)
        throws(SecretsError) -> String
    {
        var hasher = SHA512()
        if macOnlyEncrypted { hasher.update(data: macOnlyEncryptedInit) }
        for (name, node) in body {
            _ = try value(node, path: [name], key: key, mac: &hasher, macOnlyEncrypted: macOnlyEncrypted, file: file)
        }
        let digest = hasher.finalize().map { String(format: "%02X", $0) }.joined()
        do {
            return try encryptValue(Array(digest.utf8), type: "str", key: key, aad: lastModified)
        } catch {
            throw SecretsError(.io, "\(file): cannot encrypt the MAC")
        }
    }

    /// The document with `set` and `remove` applied to one env (or, for a flat file, to its keys).
    static func updated(
        _ document: SopsDocument, file: String, layout: FileLayout, env: String,
        set: [(String, SecretValue)], remove: [String], replace: Bool, identities: [Identity]
    ) throws(SecretsError) -> String {
        let text = document.text
        let format = document.format
        let body = document.body
        let metadata = document.metadata
        var key = try open(body, metadata: metadata, identities: identities, file: file).dataKey
        defer { wipe(&key) }
        let prefix: [String]
        switch layout {
        case .flat(let fileEnv):
            guard fileEnv == env.lowercased() else {
                throw SecretsError(.invalidArgument, "\(file) holds env '\(fileEnv)' only (layout = \"flat\"), not '\(env)'")
            }
            prefix = []
        case .envs:
            let existing = body.first { $0.0.lowercased() == env.lowercased() }?.0
            prefix = [existing ?? env.lowercased()]
        }
        let rules = Rules(metadata.options)
        let lastModified = now()
        let output: String
        do {
            switch format {
            case .yaml, .json:
                guard let root = document.root else { throw SecretsError(.invalidData, "\(file): not a mapping") }
                output = try updatedTree(
                    root, format: format, prefix: prefix, set: set, remove: remove, replace: replace, key: key, rules: rules,
                    macOnlyEncrypted: metadata.macOnlyEncrypted, lastModified: lastModified, file: file)
            case .dotenv, .ini:
                output = try updatedLines(
                    text, format: format, prefix: prefix, set: set, remove: remove, replace: replace, key: key, rules: rules,
                    macOnlyEncrypted: metadata.macOnlyEncrypted, lastModified: lastModified, file: file)
            }
        } catch let error as SecretsError {
            throw error
        } catch {
            throw SecretsError(.io, "\(file): cannot write the SOPS document")
        }
        return output
    }

    /// `root`: the file's tree as `SopsDocument` composed it (not parsed again).
    static func updatedTree(
        _ root: Yams.Node, format: Format, prefix: [String], set: [(String, SecretValue)], remove: [String], replace: Bool,
        key: [UInt8], rules: Rules, macOnlyEncrypted: Bool, lastModified: String, file: String
    ) throws -> String {
        guard case .mapping(let rootMapping) = root else {
            throw SecretsError(.invalidData, "\(file): not a mapping")
        }
        let all = Array(rootMapping).map { ($0.key, $0.value) }
        guard let sopsPair = all.first(where: { $0.0.string == "sops" }) else {
            throw SecretsError(.invalidData, "\(file): the sops metadata is gone")
        }
        var body = all.filter { $0.0.string != "sops" }
        func apply(_ target: [(Yams.Node, Yams.Node)], path: [String]) throws -> [(Yams.Node, Yams.Node)] {
            var entries = replace ? [] : target
            let dropped = Set((remove + set.map(\.0)).map { $0.lowercased() })
            var positions: [String: Int] = [:]
            for (index, entry) in entries.enumerated() { positions[(entry.0.string ?? "").lowercased()] = index }
            // A changed key keeps its place; removed keys go; new keys go last.
            var added: [(Yams.Node, Yams.Node)] = []
            for (name, value) in set {
                let encrypted = (Yams.Node(name), try yamlNode(value, path: path + [name], key: key, rules: rules))
                if let at = positions[name.lowercased()] {
                    entries[at] = encrypted
                } else {
                    added.append(encrypted)
                }
            }
            let setNames = Set(set.map { $0.0.lowercased() })
            entries.removeAll { entry in
                let name = (entry.0.string ?? "").lowercased()
                return dropped.contains(name) && !setNames.contains(name)
            }
            return entries + added
        }
        if let env = prefix.first {
            if let index = body.firstIndex(where: { $0.0.string == env }) {
                guard case .mapping(let mapping) = body[index].1 else {
                    throw SecretsError(.invalidData, "\(file): '\(env)' is not a table")
                }
                body[index].1 = .mapping(Yams.Node.Mapping(try apply(Array(mapping).map { ($0.key, $0.value) }, path: [env])))
            } else {
                body.append((Yams.Node(env), .mapping(Yams.Node.Mapping(try apply([], path: [env])))))
            }
        } else {
            body = try apply(body, path: [])
        }
        var pairs = body + [sopsPair]
        // The body as sops reads it, for the MAC.
        let bodyNodes = pairs.filter { $0.0.string != "sops" }.map { ($0.0.string ?? "", node($0.1)) }
        let mac = try mac(of: bodyNodes, key: key, macOnlyEncrypted: macOnlyEncrypted, lastModified: lastModified, file: file)
        guard let metaIndex = pairs.firstIndex(where: { $0.0.string == "sops" }), case .mapping(var meta) = pairs[metaIndex].1 else {
            throw SecretsError(.invalidData, "\(file): the sops metadata is gone")
        }
        meta["lastmodified"] = Yams.Node(lastModified, Tag(.str), .doubleQuoted)
        meta["mac"] = Yams.Node(mac)
        pairs[metaIndex].1 = .mapping(meta)
        let root = Yams.Node.mapping(Yams.Node.Mapping(pairs))
        if format == .json { return json(root, indent: 0) + "\n" }
        return try Yams.serialize(node: root, indent: 4, width: -1, allowUnicode: true)
    }

    /// JSON text of a document node: plain scalars YAML resolves to numbers, booleans and null stay so.
    static func json(_ node: Yams.Node, indent: Int) -> String {
        let pad = String(repeating: "\t", count: indent + 1)
        let close = String(repeating: "\t", count: indent)
        switch node {
        case .mapping(let mapping):
            if mapping.isEmpty { return "{}" }
            let fields = mapping.map { pad + JSONText.quoted($0.key.string ?? "") + ": " + json($0.value, indent: indent + 1) }
            return "{\n" + fields.joined(separator: ",\n") + "\n" + close + "}"
        case .sequence(let sequence):
            if sequence.isEmpty { return "[]" }
            return "[\n" + sequence.map { pad + json($0, indent: indent + 1) }.joined(separator: ",\n") + "\n" + close + "]"
        case .scalar(let scalar):
            if case .scalar(let parsed) = Sops.node(node) {
                switch parsed.kind {
                case .int, .float: return scalar.string
                case .bool: return scalar.string.lowercased() == "true" ? "true" : "false"
                case .null: return "null"
                default: break
                }
            }
            return JSONText.quoted(scalar.string)
        case .alias:
            return "null"
        }
    }

    /// dotenv and INI: the lines of the file, a changed key's line replaced in place, new keys after the others
    /// (in their section for INI), the metadata lines updated.
    static func updatedLines(
        _ text: String, format: Format, prefix: [String], set: [(String, SecretValue)], remove: [String], replace: Bool,
        key: [UInt8], rules: Rules, macOnlyEncrypted: Bool, lastModified: String, file: String
    ) throws -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        let section = format == .ini ? prefix.first : nil
        func escape(_ value: String) -> String { value.replacingOccurrences(of: "\n", with: "\\n") }
        func line(_ name: String, _ value: SecretValue) throws -> String {
            var (bytes, _) = plaintext(value)
            defer { wipe(&bytes) }
            let path = (section.map { [$0] } ?? []) + [name]
            let stored =
                rules.encrypts(path) && !bytes.isEmpty
                ? try encryptValue(bytes, type: "str", key: key, aad: path.joined(separator: ":") + ":")
                : escape(String(decoding: bytes, as: UTF8.self))
            return format == .ini ? "\(name) = \(stored)" : "\(name)=\(stored)"
        }
        // Which lines belong to the place being changed: dotenv, every line but metadata; INI, the env's section.
        var current: String?
        var inPlace: [Bool] = []
        var names: [String?] = []
        for text in lines {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            if format == .ini, trimmed.hasPrefix("["), trimmed.hasSuffix("]") {
                current = String(trimmed.dropFirst().dropLast())
                inPlace.append(false)
                names.append(nil)
                continue
            }
            let isComment = trimmed.hasPrefix("#") || trimmed.hasPrefix(";")
            let name = isComment ? nil : text.firstIndex(of: "=").map {
                format == .ini ? text[..<$0].trimmingCharacters(in: .whitespaces) : String(text[..<$0])
            }
            let here = format == .ini ? current == section : !(name?.hasPrefix("sops_") ?? false)
            inPlace.append(here && name != nil)
            names.append(name)
        }
        let dropped = Set((remove + set.map(\.0)).map { $0.lowercased() })
        var output: [String] = []
        var pending = set
        var insertAt: Int?
        for (index, text) in lines.enumerated() {
            if inPlace[index], let name = names[index] {
                insertAt = output.count + 1
                if replace || dropped.contains(name.lowercased()) {
                    if let at = pending.firstIndex(where: { $0.0.lowercased() == name.lowercased() }) {
                        output.append(try line(pending[at].0, pending[at].1))
                        pending.remove(at: at)
                    }
                    continue
                }
            }
            if format == .ini, let section, text.trimmingCharacters(in: .whitespaces) == "[\(section)]" { insertAt = output.count + 1 }
            output.append(text)
        }
        if !pending.isEmpty {
            var added: [String] = []
            for (name, value) in pending { added.append(try line(name, value)) }
            if let insertAt {
                output.insert(contentsOf: added, at: insertAt)
            } else if format == .ini, let section {
                let sopsAt = output.firstIndex { $0.trimmingCharacters(in: .whitespaces) == "[sops]" } ?? output.endIndex
                output.insert(contentsOf: ["[\(section)]"] + added + [""], at: sopsAt)
            } else {
                let metaAt = output.firstIndex { $0.hasPrefix("sops_") } ?? output.endIndex
                output.insert(contentsOf: added, at: metaAt)
            }
        }
        // The MAC over the new body, then the metadata lines.
        let draft = output.joined(separator: "\n") + "\n"
        guard let (body, _) = try parse(draft, format: format, file: file) else {
            throw SecretsError(.invalidData, "\(file): the sops metadata is gone")
        }
        let mac = try mac(of: body, key: key, macOnlyEncrypted: macOnlyEncrypted, lastModified: lastModified, file: file)
        current = nil
        for index in output.indices {
            let text = output[index]
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            if format == .ini {
                if trimmed.hasPrefix("["), trimmed.hasSuffix("]") { current = String(trimmed.dropFirst().dropLast()) }
                guard current == "sops", let equals = text.firstIndex(of: "=") else { continue }
                let name = text[..<equals].trimmingCharacters(in: .whitespaces)
                if name == "lastmodified" { output[index] = String(text[...equals]) + " " + lastModified }
                if name == "mac" { output[index] = String(text[...equals]) + " " + mac }
            } else {
                if text.hasPrefix("sops_lastmodified=") { output[index] = "sops_lastmodified=" + lastModified }
                if text.hasPrefix("sops_mac=") { output[index] = "sops_mac=" + mac }
            }
        }
        return output.joined(separator: "\n") + "\n"
    }
}
