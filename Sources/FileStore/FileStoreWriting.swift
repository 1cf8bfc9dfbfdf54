import Age
import Foundation
import SecretsCore
import TOMLKit

/// Reading and writing whole files, for `edit` and `set`.
extension FileStore {
    /// The file `edit` changes by default: the last (highest-priority) one.
    public var primaryFile: String { settings.files.last ?? "" }

    /// The file a write to `env` goes to: the one a read of that env looks at first, the last file whose layout
    /// holds it (`envs`, or `flat` under that env). A store none of whose files holds the env refuses the write.
    public func writeTarget(env: String) throws(SecretsError) -> String {
        let wanted = env.lowercased()
        for file in settings.files.reversed() {
            switch layout(of: file) {
            case .envs: return file
            case .flat(let holds) where holds == wanted: return file
            case .flat: continue
            }
        }
        let held = settings.files.map { file -> String in
            if case .flat(let holds) = layout(of: file) { return "\(file) holds \(holds)" }
            return "\(file) holds every env"
        }
        throw SecretsError(
            .invalidArgument, "no file of store '\(name)' holds env '\(wanted)' (\(held.joined(separator: "; ")))")
    }

    /// The decrypted bytes of one file; empty when the file does not exist yet.
    public func plaintext(of path: String) throws(SecretsError) -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = try FileIO.read(path)
        } catch where error.code == .notFound {
            return []
        }
        if let sops = try sopsFile(path) {
            // A SOPS file: the document decrypted, as `sops edit` shows it.
            return try Sops.decryptedDocument(sops, file: path, identities: try sopsIdentities())
        }
        if AgeFile.looksLikeAge(bytes) {
            let identities = try loadIdentities()
            do {
                return try AgeFile.decrypt(bytes, identities: identities)
            } catch {
                throw SecretsError(.decryptionFailed, "cannot decrypt \(path): \(error.message)")
            }
        }
        if path.hasSuffix(".age") { throw SecretsError(.decryptionFailed, "\(path) is not an age file") }
        try FileIO.requirePrivate(path, what: "plaintext secrets file")
        return bytes
    }

    /// Checks that `plaintext` parses in the file's format; the error says where, not what.
    public func validate(_ plaintext: [UInt8], for path: String) throws(SecretsError) {
        guard let text = String(validating: plaintext, as: UTF8.self) else {
            throw SecretsError(.invalidData, "\(path): not UTF-8 text")
        }
        _ = try SecretsDocument.parse(text, format: SecretsDocument.format(of: path), layout: layout(of: path), file: path)
    }

    /// Writes `plaintext` to `path` atomically: encrypted to the store's recipients when the path ends in `.age`
    /// (ASCII-armored again when the file it replaces was), else as a private plaintext file.
    public func write(_ plaintext: [UInt8], to path: String, workFactor: Int = 18) throws(SecretsError) {
        if let sops = try sopsFile(path) {
            // A SOPS file stays one: encrypted again under its own data key and metadata.
            guard let edited = String(validating: plaintext, as: UTF8.self) else {
                throw SecretsError(.invalidData, "\(path): not UTF-8 text")
            }
            try replaceSops(
                path, with: try Sops.reencrypted(edited, current: sops, file: path, identities: try sopsIdentities()))
            return
        }
        if path.hasSuffix(".age") {
            let armored = (try? FileIO.read(path)).map(AgeArmor.isArmored) ?? false
            let sealed: [UInt8]
            do {
                let binary = try AgeFile.encrypt(plaintext, to: try encryptionRecipients(workFactor: workFactor))
                sealed = armored ? AgeArmor.encode(binary) : binary
            } catch let error as AgeError {
                throw SecretsError(.invalidConfig, "cannot encrypt: \(error.message)")
            } catch {
                throw SecretsError.from(error)
            }
            try FileIO.writeAtomically(path, bytes: sealed, mode: 0o600)
        } else {
            try FileIO.writeAtomically(path, bytes: plaintext, mode: 0o600)
        }
    }

    /// Decrypts `file`, sets string keys in one env, re-encrypts and replaces it atomically; plaintext copies are wiped.
    public func setKeys(_ values: [(String, String)], env: String, in file: String) throws(SecretsError) {
        try update(env: env, in: file, set: values.map { ($0.0, .string($0.1)) }, remove: [], replace: false)
    }

    /// Sets string keys in one env of a TOML document (Dynaconf's envs layout) and returns the new document.
    public static func settingKeys(_ values: [(String, String)], env: String, in plaintext: [UInt8], file: String)
        throws(SecretsError) -> [UInt8]
    {
        try updating(
            plaintext, file: file, layout: .envs, env: env, set: values.map { ($0.0, .string($0.1)) }, remove: [],
            replace: false)
    }

    /// One env of a document with keys set (any spelling of a key is replaced: Dynaconf keys ignore case), removed,
    /// or with `replace` exactly `set`, in the file's layout: a TOML `[env]` table, or for a flat file (TOML or
    /// dotenv) the whole document, which must be that env. Returns the new document; comments are not kept in TOML.
    static func updating(
        _ plaintext: [UInt8], file: String, layout: FileLayout, env: String, set: [(String, SecretValue)],
        remove: [String], replace: Bool
    ) throws(SecretsError) -> [UInt8] {
        let envName = env.lowercased()
        if case .flat(let holds) = layout, holds != envName {
            throw SecretsError(
                .invalidArgument, "\(file) is env '\(holds)' only (layout flat): a write to '\(envName)' would not be read there")
        }
        let format = SecretsDocument.format(of: file)
        guard let text = String(validating: plaintext, as: UTF8.self) else {
            throw SecretsError(.invalidData, "\(file): not UTF-8 text")
        }
        if format == .dotenv, case .flat = layout {
            return DotenvEditing.updating(text, set: set, remove: remove, replace: replace)
        }
        guard format == .toml else {
            throw SecretsError(.unsupported, "set and write work on TOML and dotenv files; use edit for \(file)")
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch {
            throw SecretsError(.invalidData, "\(file): TOML syntax error")
        }
        if case .flat = layout {
            let whole = replace ? TOMLTable() : table
            for key in remove + set.map(\.0) {
                for existing in whole.keys where existing.lowercased() == key.lowercased() { whole.remove(at: existing) }
            }
            for (key, value) in set { whole[key] = toml(value) }
            return Array(whole.convert(to: .toml).utf8) + [UInt8(ascii: "\n")]
        }
        let section = replace ? TOMLTable() : table[envName]?.table ?? TOMLTable()
        for key in remove + set.map(\.0) {
            for existing in section.keys where existing.lowercased() == key.lowercased() { section.remove(at: existing) }
        }
        for (key, value) in set { section[key] = toml(value) }
        table[envName] = section
        return Array(table.convert(to: .toml).utf8) + [UInt8(ascii: "\n")]
    }
}

extension FileStore {
    /// Sets keys (any value: strings, numbers, tables...), removes keys, or with `replace` makes the env hold
    /// exactly `set`, in `file` (TOML, or a SOPS file of any format), re-encrypted and replaced atomically.
    public func update(env: String, in file: String, set: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError)
    {
        if try updateSops(env: env, in: file, set: set, remove: remove, replace: replace) { return }
        var original = try plaintext(of: file)
        defer { wipe(&original) }
        var updated = try Self.updating(
            original, file: file, layout: layout(of: file), env: env, set: set, remove: remove, replace: replace)
        defer { wipe(&updated) }
        try write(updated, to: file)
    }

    /// A SOPS file changed as sops changes it (see `Sops.updated`); false when `file` is not a SOPS file.
    func updateSops(env: String, in file: String, set: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError) -> Bool
    {
        guard let sops = try sopsFile(file) else { return false }
        let updated = try Sops.updated(
            sops, file: file, layout: layout(of: file), env: env, set: set, remove: remove, replace: replace,
            identities: try sopsIdentities())
        try replaceSops(file, with: updated)
        return true
    }

    /// `path` parsed once when it is a SOPS file (as it is, not inside an age file); nil otherwise, also when it
    /// cannot be read (the caller's own read then says why). Every SOPS write works on this one parse.
    func sopsFile(_ path: String) throws(SecretsError) -> SopsDocument? {
        guard let format = SecretsDocument.format(of: path).sops, !path.lowercased().hasSuffix(".age"),
            let bytes = try? FileIO.read(path), let text = String(validating: bytes, as: UTF8.self)
        else { return nil }
        return try Sops.document(text, format: format, file: path)
    }

    /// Replaces a SOPS file atomically, keeping its mode (SOPS files often live in git, readable by all: their
    /// values are encrypted).
    func replaceSops(_ path: String, with text: String) throws(SecretsError) {
        let mode = (try? FileIO.status(path)).map { mode_t($0.mode & 0o7777) } ?? 0o600
        try FileIO.writeAtomically(path, bytes: Array(text.utf8), mode: mode)
    }

    static func toml(_ value: SecretValue) -> any TOMLValueConvertible {
        switch value {
        case .string(let text): return text
        case .int(let number): return Int(number)
        case .float(let number): return number
        case .bool(let flag): return flag
        case .datetime(let text): return text
        case .bytes(let raw): return String(decoding: raw, as: UTF8.self)
        case .null: return ""
        case .array(let items):
            let array = TOMLArray()
            for item in items { array.append(toml(item)) }
            return array
        case .table(let fields):
            let table = TOMLTable()
            for (key, item) in fields { table[key] = toml(item) }
            return table
        }
    }
}

extension SecretsError {
    static func from(_ error: any Error) -> SecretsError {
        (error as? SecretsError) ?? SecretsError(.io, "unexpected error")
    }
}

extension FileStore: WritableSecretStore {
    /// At a level's location (a file path relative to the config's folder), else in the file a read of the env
    /// looks at first (`writeTarget`).
    public func update(env: String, at location: String?, set: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError)
    {
        let file: String
        if let location { file = FileIO.absolute(location, in: settings.directory) } else { file = try writeTarget(env: env) }
        try update(env: env, in: file, set: set, remove: remove, replace: replace)
    }
}
