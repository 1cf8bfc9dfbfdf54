import Age
import Crypto
import Foundation
import SecretsCore
import Yams

/// SOPS files as sops writes them (YAML, JSON, dotenv, INI with age recipients): the data key is unwrapped from the
/// `age` entry an identity opens, every `ENC[AES256_GCM,...]` value is opened with AES-256-GCM (a 32-byte IV, the
/// value's path as additional data), and the MAC over all values is checked before anything is served. Errors name
/// the file and what is wrong, never a value.
public enum Sops {
    enum Format {
        case yaml, json, dotenv, ini
    }

    /// A document before decryption, in document order. `key` paths are what sops authenticates.
    indirect enum Node {
        case map([(String, Node)])
        case list([Node])
        case scalar(Scalar)
    }

    struct Scalar {
        enum Kind { case string, int, float, bool, null, time }
        var text: String
        var kind: Kind
    }

    /// What the `sops` metadata says.
    struct Metadata {
        var age: [(recipient: String, enc: String)] = []
        /// Key kinds other than age that hold keys (pgp, kms, gcp_kms, azure_kv, hc_vault, ...).
        var otherKinds: [String] = []
        var lastModified = ""
        var mac = ""
        var macOnlyEncrypted = false
        /// Scalar options (`unencrypted_suffix`, `encrypted_regex`, ...), which say what a writer encrypts.
        var options: [String: String] = [:]
    }

    /// A decrypted document: its top-level entries (envs or keys, by layout) in order, and the data key (for writing).
    struct Opened {
        var entries: [(String, SecretValue)]
        var dataKey: [UInt8]
        var metadata: Metadata
    }

    /// The 32 bytes hashed first when only encrypted values are in the MAC (`mac_only_encrypted`).
    static let macOnlyEncryptedInit: [UInt8] = [
        0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
        0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
    ]

    // MARK: Parsing

    /// The parsed document when `text` is a SOPS file of `format`, else nil (an ordinary file).
    static func document(_ text: String, format: Format, file: String) throws(SecretsError) -> SopsDocument? {
        var root: Yams.Node?
        if format == .yaml || format == .json {
            // JSON is read with the YAML parser too: it keeps the order of keys, which the MAC depends on.
            guard text.contains("sops") else { return nil }
            do {
                root = try Yams.compose(yaml: text)
            } catch {
                throw SecretsError(.invalidData, "\(file): not valid \(format == .json ? "JSON" : "YAML")")
            }
        }
        guard let (body, metadata) = try parseBody(text, format: format, root: root, file: file) else { return nil }
        return SopsDocument(text: text, format: format, root: root, body: body, metadata: metadata)
    }

    /// The body and metadata when `text` is a SOPS file of `format`, else nil (an ordinary file).
    static func parse(_ text: String, format: Format, file: String) throws(SecretsError) -> ([(String, Node)], Metadata)? {
        guard let document = try document(text, format: format, file: file) else { return nil }
        return (document.body, document.metadata)
    }

    /// `root`: the composed tree of a YAML or JSON `text`.
    private static func parseBody(
        _ text: String, format: Format, root: Yams.Node?, file: String
    ) throws(SecretsError) -> ([(String, Node)], Metadata)? {
        switch format {
        case .yaml, .json:
            guard let root, case .map(let entries) = node(root), let index = entries.firstIndex(where: { $0.0 == "sops" }),
                case .map(let sops) = entries[index].1
            else { return nil }
            var body = entries
            body.remove(at: index)
            return (body, try metadata(sops, file: file))
        case .dotenv:
            var body: [(String, Node)] = []
            var flat: [(String, String)] = []
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                let trimmed = line.drop { $0 == " " || $0 == "\t" }
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                guard let equals = line.firstIndex(of: "=") else { continue }
                let key = String(line[..<equals])
                let value = String(line[line.index(after: equals)...])
                if key.hasPrefix("sops_") {
                    flat.append((String(key.dropFirst(5)), value.replacingOccurrences(of: "\\n", with: "\n")))
                } else {
                    body.append((key, .scalar(Scalar(text: value.replacingOccurrences(of: "\\n", with: "\n"), kind: .string))))
                }
            }
            guard flat.contains(where: { $0.0 == "mac" }) else { return nil }
            return (body, try metadata(flattened: flat, file: file))
        case .ini:
            let sections = iniSections(text)
            guard let sops = sections.first(where: { $0.0 == "sops" }) else { return nil }
            let body = sections.filter { $0.0 != "sops" }.map { name, pairs in
                (name, Node.map(pairs.map { ($0.0, Node.scalar(Scalar(text: $0.1, kind: .string))) }))
            }
            return (body, try metadata(flattened: sops.1.map { ($0.0, $0.1.replacingOccurrences(of: "\\n", with: "\n")) }, file: file))
        }
    }

    /// `[section]` then `key = value` lines, in order; `#` and `;` start comments.
    static func iniSections(_ text: String) -> [(String, [(String, String)])] {
        var sections: [(String, [(String, String)])] = []
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                sections.append((String(line.dropFirst().dropLast()), []))
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { continue }
            if sections.isEmpty { sections.append(("DEFAULT", [])) }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            sections[sections.count - 1].1.append((key, value))
        }
        return sections
    }

    /// A YAML node as a document node; scalars keep their text and the type YAML resolves them to.
    static func node(_ yaml: Yams.Node) -> Node {
        switch yaml {
        case .scalar(let scalar):
            let kind: Scalar.Kind
            // Quoted and block scalars are strings; plain ones (and ones built here, style .any) resolve by tag.
            if scalar.style != .plain && scalar.style != .any {
                kind = .string
            } else {
                switch yaml.tag.rawValue {
                case Tag.Name.bool.rawValue: kind = .bool
                case Tag.Name.int.rawValue: kind = .int
                case Tag.Name.float.rawValue: kind = .float
                case Tag.Name.null.rawValue: kind = .null
                case Tag.Name.timestamp.rawValue: kind = .time
                default: kind = .string
                }
            }
            return .scalar(Scalar(text: scalar.string, kind: kind))
        case .mapping(let mapping):
            return .map(mapping.map { ($0.key.string ?? "", node($0.value)) })
        case .sequence(let sequence):
            return .list(sequence.map(node))
        case .alias:
            return .scalar(Scalar(text: "", kind: .null))
        }
    }

    static func metadata(_ sops: [(String, Node)], file: String) throws(SecretsError) -> Metadata {
        var out = Metadata()
        for (key, value) in sops {
            switch (key, value) {
            case ("age", .list(let items)):
                for item in items {
                    guard case .map(let fields) = item else { continue }
                    var recipient = ""
                    var enc = ""
                    for (name, field) in fields {
                        if case .scalar(let scalar) = field {
                            if name == "recipient" { recipient = scalar.text }
                            if name == "enc" { enc = scalar.text }
                        }
                    }
                    if !enc.isEmpty { out.age.append((recipient, enc)) }
                }
            case ("lastmodified", .scalar(let scalar)): out.lastModified = scalar.text
            case ("mac", .scalar(let scalar)): out.mac = scalar.text
            case ("mac_only_encrypted", .scalar(let scalar)): out.macOnlyEncrypted = scalar.text.lowercased() == "true"
            case ("key_groups", .list(let groups)) where !groups.isEmpty: out.otherKinds.append("key_groups (Shamir)")
            case (_, .scalar(let scalar)): out.options[key] = scalar.text
            case (_, .list(let items)) where !items.isEmpty: out.otherKinds.append(key)
            default: continue
            }
        }
        guard !out.mac.isEmpty, !out.lastModified.isEmpty else {
            throw SecretsError(.invalidData, "\(file): the sops metadata has no mac or lastmodified")
        }
        return out
    }

    /// dotenv's `sops_*` keys and INI's `[sops]` section: `age__list_0__map_enc`, `lastmodified`, `mac`, ...
    static func metadata(flattened: [(String, String)], file: String) throws(SecretsError) -> Metadata {
        var out = Metadata()
        var stanzas: [Int: (recipient: String, enc: String)] = [:]
        for (key, value) in flattened {
            if key.hasPrefix("age__list_"), let rest = Optional(key.dropFirst("age__list_".count)),
                let split = rest.range(of: "__map_"), let index = Int(rest[..<split.lowerBound])
            {
                let field = rest[split.upperBound...]
                var stanza = stanzas[index] ?? ("", "")
                if field == "recipient" { stanza.recipient = value }
                if field == "enc" { stanza.enc = value }
                stanzas[index] = stanza
                continue
            }
            switch key {
            case "lastmodified": out.lastModified = value
            case "mac": out.mac = value
            case "mac_only_encrypted": out.macOnlyEncrypted = value.lowercased() == "true"
            default:
                out.options[key] = value
                if let range = key.range(of: "__list_") {
                    let kind = String(key[..<range.lowerBound])
                    if !out.otherKinds.contains(kind) { out.otherKinds.append(kind) }
                }
            }
        }
        out.age = stanzas.keys.sorted().compactMap { stanzas[$0] }.filter { !$0.enc.isEmpty }
        guard !out.mac.isEmpty, !out.lastModified.isEmpty else {
            throw SecretsError(.invalidData, "\(file): the sops metadata has no mac or lastmodified")
        }
        return out
    }

    // MARK: Decrypting

    /// The 32-byte data key from the first `age` entry one of `identities` opens.
    static func dataKey(_ metadata: Metadata, identities: [Identity], file: String) throws(SecretsError) -> [UInt8] {
        guard !metadata.age.isEmpty else {
            let kinds = metadata.otherKinds.isEmpty ? "none" : metadata.otherKinds.joined(separator: ", ")
            throw SecretsError(
                .decryptionFailed,
                "\(file): this SOPS file has no age recipient; its keys are: \(kinds). secretsfs opens SOPS files with age only")
        }
        for stanza in metadata.age {
            if var key = try? AgeFile.decrypt(Array(stanza.enc.utf8), identities: identities) {
                guard key.count == 32 else {
                    wipe(&key)
                    throw SecretsError(.decryptionFailed, "\(file): the SOPS data key is not 32 bytes")
                }
                return key
            }
        }
        let recipients = metadata.age.map(\.recipient).joined(separator: ", ")
        throw SecretsError(.decryptionFailed, "\(file): no identity of this store opens the SOPS data key (recipients: \(recipients))")
    }

    /// Opens the document: every value decrypted and typed, the MAC checked.
    static func open(
        _ body: [(String, Node)], metadata: Metadata, identities: [Identity], file: String
    ) throws(SecretsError) -> Opened {
        var key = try dataKey(metadata, identities: identities, file: file)
        var hasher = SHA512()
        if metadata.macOnlyEncrypted { hasher.update(data: macOnlyEncryptedInit) }
        var entries: [(String, SecretValue)] = []
        for (name, node) in body {
            entries.append((name, try value(node, path: [name], key: key, mac: &hasher, macOnlyEncrypted: metadata.macOnlyEncrypted, file: file)))
        }
        let digest = hasher.finalize().map { String(format: "%02X", $0) }.joined()
        var stored: [UInt8]
        do {
            stored = try decryptValue(metadata.mac, key: key, aad: metadata.lastModified).0
        } catch {
            wipe(&key)
            throw SecretsError(.decryptionFailed, "\(file): cannot decrypt the MAC (lastmodified or mac changed): tampered?")
        }
        defer { wipe(&stored) }
        guard stored.count == digest.utf8.count, zip(stored, digest.utf8).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else {
            wipe(&key)
            throw SecretsError(.decryptionFailed, "\(file): MAC mismatch: the file was changed outside sops (tampered?)")
        }
        return Opened(entries: entries, dataKey: key, metadata: metadata)
    }

    static func value(
        _ node: Node, path: [String], key: [UInt8], mac: inout SHA512, macOnlyEncrypted: Bool, file: String
    ) throws(SecretsError) -> SecretValue {
        switch node {
        case .map(let entries):
            var table: [String: SecretValue] = [:]
            for (name, child) in entries {
                table[name] = try value(child, path: path + [name], key: key, mac: &mac, macOnlyEncrypted: macOnlyEncrypted, file: file)
            }
            return .table(table)
        case .list(let items):
            var array: [SecretValue] = []
            // List positions are not part of the path sops authenticates.
            for item in items {
                array.append(try value(item, path: path, key: key, mac: &mac, macOnlyEncrypted: macOnlyEncrypted, file: file))
            }
            return .array(array)
        case .scalar(let scalar):
            if scalar.kind == .string, scalar.text.hasPrefix("ENC[AES256_GCM,") {
                let aad = path.joined(separator: ":") + ":"
                var plaintext: [UInt8]
                let type: String
                do {
                    (plaintext, type) = try decryptValue(scalar.text, key: key, aad: aad)
                } catch {
                    throw SecretsError(
                        .decryptionFailed, "\(file): could not decrypt the value of \(path.joined(separator: ".")): tampered or moved?")
                }
                defer { wipe(&plaintext) }
                mac.update(data: plaintext)
                return typed(plaintext, type: type)
            }
            if scalar.kind == .null || (scalar.kind == .string && scalar.text.isEmpty) { return clear(scalar) }
            if !macOnlyEncrypted { mac.update(data: Array(macBytes(scalar).utf8)) }
            return clear(scalar)
        }
    }

    /// A decrypted value as the file serves it: `str` exact; `int`, `float`, `time` as their text (a whole number
    /// stays whole: JSON files store every number as `float`); `bool` as `true`/`false`.
    static func typed(_ plaintext: [UInt8], type: String) -> SecretValue {
        let text = String(decoding: plaintext, as: UTF8.self)
        switch type {
        case "int":
            return Int64(text).map(SecretValue.int) ?? .string(text)
        case "float":
            if let whole = Int64(text) { return .int(whole) }
            return Double(text).map(SecretValue.float) ?? .string(text)
        case "bool":
            return .bool(text.lowercased() == "true")
        case "time":
            return .datetime(text)
        default:
            guard String(validating: plaintext, as: UTF8.self) != nil else { return .bytes(plaintext) }
            return .string(text)
        }
    }

    /// A value left in clear (`_unencrypted`, a regex) as the file serves it.
    static func clear(_ scalar: Scalar) -> SecretValue {
        switch scalar.kind {
        case .string: return .string(scalar.text)
        case .int: return Int64(scalar.text).map(SecretValue.int) ?? .string(scalar.text)
        case .float: return Double(scalar.text).map(SecretValue.float) ?? .string(scalar.text)
        case .bool: return .bool(["true", "yes", "on", "y"].contains(scalar.text.lowercased()))
        case .null: return .null
        case .time: return .datetime(scalar.text)
        }
    }

    /// What sops hashes for a clear value: booleans as `True`/`False`, floats without an exponent.
    static func macBytes(_ scalar: Scalar) -> String {
        switch scalar.kind {
        case .bool: return ["true", "yes", "on", "y"].contains(scalar.text.lowercased()) ? "True" : "False"
        case .float: return Double(scalar.text).map(plainFloat) ?? scalar.text
        case .int: return Int64(scalar.text).map { String($0) } ?? scalar.text
        default: return scalar.text
        }
    }

    /// The shortest round-tripping digits without an exponent (Go's `FormatFloat(f, 'f', -1, 64)`).
    static func plainFloat(_ number: Double) -> String {
        let shortest = "\(number)"
        guard let e = shortest.firstIndex(where: { $0 == "e" || $0 == "E" }), let exponent = Int(shortest[shortest.index(after: e)...]) else {
            return shortest.hasSuffix(".0") ? String(shortest.dropLast(2)) : shortest
        }
        var mantissa = String(shortest[..<e])
        let negative = mantissa.hasPrefix("-")
        if negative { mantissa.removeFirst() }
        let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
        let whole = String(parts[0])
        let fraction = parts.count > 1 ? String(parts[1]) : ""
        var digits = whole + fraction
        var point = whole.count + exponent
        if point <= 0 {
            digits = String(repeating: "0", count: -point + 1) + digits
            point = 1
        } else if point > digits.count {
            digits += String(repeating: "0", count: point - digits.count)
        }
        var result = String(digits.prefix(point))
        var rest = String(digits.dropFirst(point))
        while rest.hasSuffix("0") { rest.removeLast() }
        if !rest.isEmpty { result += "." + rest }
        return (negative ? "-" : "") + result
    }

    /// `ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]` opened: plaintext and type.
    static func decryptValue(_ text: String, key: [UInt8], aad: String) throws -> ([UInt8], String) {
        guard text.hasPrefix("ENC[AES256_GCM,"), text.hasSuffix("]") else { throw SopsFormatError() }
        var fields: [String: String] = [:]
        for part in text.dropFirst("ENC[AES256_GCM,".count).dropLast().split(separator: ",") {
            guard let colon = part.firstIndex(of: ":") else { throw SopsFormatError() }
            fields[String(part[..<colon])] = String(part[part.index(after: colon)...])
        }
        guard let data = fields["data"].flatMap({ Data(base64Encoded: $0) }), let iv = fields["iv"].flatMap({ Data(base64Encoded: $0) }),
            let tag = fields["tag"].flatMap({ Data(base64Encoded: $0) }), tag.count == 16, !iv.isEmpty
        else { throw SopsFormatError() }
        let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: iv), ciphertext: data, tag: tag)
        let plaintext = try AES.GCM.open(box, using: SymmetricKey(data: key), authenticating: Array(aad.utf8))
        return (Array(plaintext), fields["type"] ?? "str")
    }

    /// `ENC[...]` of `plaintext` under the data key, with a new random 32-byte IV.
    static func encryptValue(_ plaintext: [UInt8], type: String, key: [UInt8], aad: String) throws -> String {
        var iv = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in iv.indices { iv[index] = UInt8.random(in: 0...255, using: &generator) }
        let box = try AES.GCM.seal(plaintext, using: SymmetricKey(data: key), nonce: AES.GCM.Nonce(data: iv), authenticating: Array(aad.utf8))
        return "ENC[AES256_GCM,data:\(box.ciphertext.base64EncodedString()),iv:\(Data(iv).base64EncodedString()),tag:\(box.tag.base64EncodedString()),type:\(type)]"
    }

    struct SopsFormatError: Error {}
}

/// A SOPS file parsed once: its text, the composed YAML/JSON tree (that a write edits), the body without the `sops`
/// entry and the metadata.
struct SopsDocument {
    var text: String
    var format: Sops.Format
    var root: Yams.Node?
    var body: [(String, Sops.Node)]
    var metadata: Sops.Metadata
}
