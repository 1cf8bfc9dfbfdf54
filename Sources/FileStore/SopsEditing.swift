import Age
import Crypto
import Foundation
import SecretsCore
import Yams

/// `secretsfs edit` on a SOPS file: the document decrypted as sops shows it, and the edited document encrypted
/// again under the same data key and metadata.
extension Sops {
    /// The decrypted document in its own format (nested tables with their keys sorted), as bytes the caller wipes.
    static func decryptedDocument(_ document: SopsDocument, file: String, identities: [Identity]) throws(SecretsError)
        -> [UInt8]
    {
        var opened = try open(document.body, metadata: document.metadata, identities: identities, file: file)
        wipe(&opened.dataKey)
        return PlainDocument.render(opened.entries, format: document.format)
    }

    /// `edited` (a plain document in the file's format) encrypted as the SOPS file `current` is: every value
    /// encrypted (or left clear) by the file's rules, under its data key, with its recipients and options.
    static func reencrypted(_ edited: String, current: SopsDocument, file: String, identities: [Identity])
        throws(SecretsError) -> String
    {
        let format = current.format
        let currentBody = current.body
        let entries: [(String, SecretValue)]
        switch format {
        case .yaml, .json:
            let root: Yams.Node?
            do {
                root = try Yams.compose(yaml: edited)
            } catch {
                throw SecretsError(.invalidData, "\(file): the edited document is not valid \(format == .json ? "JSON" : "YAML")")
            }
            guard let root, case .map(let body) = node(root) else {
                throw SecretsError(.invalidData, "\(file): the edited document must be a mapping")
            }
            guard !body.contains(where: { $0.0 == "sops" }) else {
                throw SecretsError(.invalidData, "\(file): the edited document must not have a top-level 'sops' key")
            }
            entries = body.map { ($0.0, plainValue($0.1)) }
        case .dotenv:
            entries = SecretsDocument.dotenv(edited)
        case .ini:
            return try reencryptedINI(edited, current: current, file: file, identities: identities)
        }
        // The whole body replaced: every key of the file as if it were one flat env.
        return try updated(
            current, file: file, layout: .flat(env: "default"), env: "default", set: entries,
            remove: currentBody.map(\.0), replace: true, identities: identities)
    }

    /// A document node of an edited plain document as a value.
    static func plainValue(_ node: Node) -> SecretValue {
        switch node {
        case .map(let entries):
            var table: [String: SecretValue] = [:]
            for (name, child) in entries { table[name] = plainValue(child) }
            return .table(table)
        case .list(let items):
            return .array(items.map(plainValue))
        case .scalar(let scalar):
            return clear(scalar)
        }
    }
}

extension Sops {
    /// An edited INI document encrypted as the SOPS file `current`: every section and key written anew (values
    /// encrypted by the file's rules, with their `section:key:` path), then the `[sops]` section of `current` with a
    /// new MAC and `lastmodified`.
    static func reencryptedINI(_ edited: String, current: SopsDocument, file: String, identities: [Identity])
        throws(SecretsError) -> String
    {
        let metadata = current.metadata
        var key = try open(current.body, metadata: metadata, identities: identities, file: file).dataKey
        defer { wipe(&key) }
        let rules = Rules(metadata.options)
        var draft: [String] = []
        do {
            for (section, pairs) in iniSections(edited) where section != "sops" {
                draft.append("[\(section)]")
                for (name, value) in pairs {
                    let path = [section, name]
                    let stored =
                        rules.encrypts(path) && !value.isEmpty
                        ? try encryptValue(Array(value.utf8), type: "str", key: key, aad: path.joined(separator: ":") + ":")
                        : value
                    draft.append("\(name) = \(stored)")
                }
                draft.append("")
            }
        } catch {
            throw SecretsError(.io, "\(file): cannot encrypt the edited document")
        }
        var inSops = false
        for line in current.text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("["), trimmed.hasSuffix("]") { inSops = trimmed == "[sops]" }
            if inSops { draft.append(String(line)) }
        }
        // Nothing to set: this recomputes the MAC and lastmodified over the new body.
        do {
            return try updatedLines(
                draft.joined(separator: "\n"), format: .ini, prefix: [], set: [], remove: [], replace: false, key: key,
                rules: rules, macOnlyEncrypted: metadata.macOnlyEncrypted, lastModified: now(), file: file)
        } catch let error as SecretsError {
            throw error
        } catch {
            throw SecretsError(.io, "\(file): cannot write the SOPS document")
        }
    }
}
