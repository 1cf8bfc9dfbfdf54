import Age
import Foundation
import Logging
import SecretsCore
import Locking

/// How a file's document maps to envs: `envs` (Dynaconf's layout: top-level tables are envs) or `flat` (the whole
/// document is one env: what most SOPS files, helm values and dotenv files are).
public enum FileLayout: Sendable, Equatable {
    case envs
    case flat(env: String)
}

/// Settings of a file store, read from its `[stores.<name>]` table.
public struct FileStoreSettings: Sendable {
    public var files: [String]
    /// Per file (absolute path): its layout, from the store's `layout`/`env` or the file's own entry. Files not
    /// listed: dotenv files flat under `default`, every other format `envs`.
    public var layouts: [String: FileLayout]
    public var identity: String?
    public var passphraseFile: String?
    public var recipients: [String]
    /// The highest scrypt work factor accepted when decrypting (age's default is 18).
    public var maxWorkFactor: Int
    /// The config file's folder: relative paths (also a scope chain element's) are taken from here.
    public var directory: String

    public init(config: StoreConfig) throws(LocatedError) {
        let section = config.section
        try section.rejectUnknown(allowed: [
            "type", "fresh", "fresh_max_age", "directory_layout", "files", "identity", "passphrase_file", "recipients",
            "max_work_factor", "layout", "env",
        ])
        func layout(_ layoutName: String?, env: String?, key: String) throws(LocatedError) -> FileLayout? {
            switch (layoutName, env) {
            case (nil, nil): return nil
            case ("envs"?, nil): return .envs
            case ("envs"?, _?): throw section.error(key, "env = ... goes with layout = \"flat\" (the whole file is that env)")
            case ("flat"?, nil): throw section.error(key, "layout = \"flat\" needs env = \"production\" (the env the file is)")
            case (nil, let env?), ("flat"?, let env?):
                guard EntryName.isValid(env) else { throw section.error(key, "env '\(env)' cannot be a folder name") }
                return .flat(env: env.lowercased())
            case (let other?, _):
                throw section.error(key, "layout must be \"envs\" or \"flat\" (or \"kubernetes\", the directories' layout), not \"\(other)\"")
            }
        }
        // `layout = "kubernetes"` (or "plain") is the directories' layout (DirectoryLayout), not the files'.
        let named = try section.string("layout")
        let storeLayoutName = named == "kubernetes" || named == "plain" ? nil : named
        let storeEnv = try section.string("env")
        // A store-level `layout = "flat"` may leave the env to each files entry; a plain path then needs the store's.
        let storeLayout = storeLayoutName == "flat" && storeEnv == nil
            ? nil : try layout(storeLayoutName, env: storeEnv, key: "layout")
        let flatWithoutEnv = storeLayoutName == "flat" && storeEnv == nil
        var expanded: [String] = []
        var layouts: [String: FileLayout] = [:]
        let entries: [SecretValue]
        switch section.values["files"] {
        case .array(let items)?: entries = items
        case .string?: entries = [section.values["files"] ?? .null]
        default: entries = []
        }
        guard !entries.isEmpty else {
            throw section.error("files", "store '\(config.name)' needs files = [\"/path/to/secrets.toml.age\"]")
        }
        for entry in entries {
            switch entry {
            case .string(let file):
                let path = section.absolutePath(try section.expand(file, key: "files"))
                expanded.append(path)
                if flatWithoutEnv {
                    throw section.error(
                        "layout", "layout = \"flat\" needs env = \"production\" (the env the file is), on the store or in each files entry")
                }
                if let storeLayout { layouts[path] = storeLayout }
            case .table(let fields):
                guard case .string(let file)? = fields["path"] else {
                    throw section.error("files", "a files entry as a table needs path = \"...\" (and env = \"...\" or layout = ...)")
                }
                for name in fields.keys where !["path", "env", "layout"].contains(name) {
                    throw section.error("files", "unknown key '\(name)' in a files entry (known: env, layout, path)")
                }
                var fileEnv: String?
                if case .string(let text)? = fields["env"] { fileEnv = text }
                var fileLayout: String?
                if case .string(let text)? = fields["layout"] { fileLayout = text }
                let path = section.absolutePath(try section.expand(file, key: "files"))
                expanded.append(path)
                // The entry's own env makes the file flat under it, whatever the store's layout; its own layout
                // takes the store's env when it names none.
                let chosen: FileLayout?
                if let fileLayout {
                    chosen = try layout(fileLayout, env: fileLayout == "flat" ? fileEnv ?? storeEnv : fileEnv, key: "files")
                } else if let fileEnv {
                    chosen = try layout("flat", env: fileEnv, key: "files")
                } else if flatWithoutEnv {
                    throw section.error(
                        "files", "layout = \"flat\" needs env = \"production\" (the env the file is), on the store or in each files entry")
                } else {
                    chosen = storeLayout
                }
                if let chosen { layouts[path] = chosen }
            default:
                throw section.error("files", "files lists paths (strings) or { path = ..., env = ... } tables")
            }
        }
        self.files = expanded
        self.layouts = layouts
        directory = section.directory
        identity = try section.path("identity")
        passphraseFile = try section.path("passphrase_file")
        recipients = try section.stringArray("recipients") ?? []
        for recipient in recipients {
            do {
                _ = try X25519Recipient(string: recipient)
            } catch {
                throw section.error("recipients", "'\(recipient)' is not an age recipient (age1...)")
            }
        }
        maxWorkFactor = Int(try section.int("max_work_factor") ?? 22)
    }
}

/// `type = "file"`: local files, age-encrypted (`.age`) or private plaintext (Dynaconf's `.secrets.toml`).
public final class FileStore: SecretStore {
    public let name: String
    public let settings: FileStoreSettings
    private let logger: Logger
    private let loaded: Locked<[String: LoadedFile]>
    private let views: Locked<[String: MergedView]>
    private let watcher: Locked<FileWatcher?>

    struct LoadedFile {
        var status: FileIO.Status
        var envs: [String: [String: SecretValue]]
    }

    struct MergedView {
        var statuses: [FileIO.Status]
        var envs: [String: [String: SecretValue]]
        /// env -> lower-cased key -> the key as stored.
        var folded: [String: [String: String]]
    }

    public init(config: StoreConfig, logger: Logger) throws(LocatedError) {
        self.name = config.name
        self.settings = try FileStoreSettings(config: config)
        self.logger = logger
        self.loaded = Locked([:])
        self.views = Locked([:])
        self.watcher = Locked(nil)
    }

    /// The files behind a location: a chain element's path (relative to the config file's folder), else the
    /// configured files.
    func files(at location: String?) -> [String] {
        location.map { [FileIO.absolute($0, in: settings.directory)] } ?? settings.files
    }

    public func envs(at location: String?) throws(SecretsError) -> [String] {
        try view(at: location).envs.keys.sorted()
    }

    public func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        try view(at: location).envs[env.lowercased()]
    }

    public func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        let view = try view(at: location)
        let folded = key.lowercased()
        for layer in layers {
            guard let fields = view.envs[layer.lowercased()] else { continue }
            if let exact = fields[key] { return exact }
            if let spelled = view.folded[layer.lowercased()]?[folded], let value = fields[spelled] { return value }
        }
        return nil
    }

    /// The merged content of a location's files, rebuilt only when one of the files changed. Later files override
    /// earlier ones key by key, ignoring case as Dynaconf does.
    func view(at location: String?) throws(SecretsError) -> MergedView {
        let paths = files(at: location)
        var parts: [(FileIO.Status, [String: [String: SecretValue]])] = []
        for path in paths { parts.append(try load(path)) }
        let statuses = parts.map(\.0)
        let key = location ?? ""
        if let cached = views.withLock({ $0[key] }), cached.statuses == statuses { return cached }
        var envs: [String: [String: SecretValue]] = [:]
        var folded: [String: [String: String]] = [:]
        for (_, fileEnvs) in parts {
            for (env, fields) in fileEnvs {
                var merged = envs[env] ?? [:]
                var index = folded[env] ?? [:]
                for (name, value) in fields {
                    let lower = name.lowercased()
                    if let existing = index[lower], existing != name { merged.removeValue(forKey: existing) }
                    merged[name] = value
                    index[lower] = name
                }
                envs[env] = merged
                folded[env] = index
            }
        }
        let view = MergedView(statuses: statuses, envs: envs, folded: folded)
        views.withLock { $0[key] = view }
        return view
    }

    /// The parsed content of one file. The file is stat'ed on every call and read, decrypted and parsed again only
    /// when its inode, size, mtime or ctime changed.
    func load(_ path: String) throws(SecretsError) -> (FileIO.Status, [String: [String: SecretValue]]) {
        let status = try statusOrFail(path)
        if let cached = loaded.withLock({ $0[path] }), cached.status == status {
            return (status, cached.envs)
        }
        var bytes = try FileIO.read(path)
        defer { wipe(&bytes) }
        var plaintext: [UInt8]
        if AgeFile.looksLikeAge(bytes) {
            plaintext = try decrypt(bytes, path: path)
        } else if path.hasSuffix(".age") {
            throw SecretsError(.decryptionFailed, "store '\(name)': \(path) is not an age file")
        } else {
            plaintext = bytes
        }
        let encrypted = AgeFile.looksLikeAge(bytes)
        defer { wipe(&plaintext) }
        guard let text = String(validating: plaintext, as: UTF8.self) else {
            throw SecretsError(.invalidData, "store '\(name)': \(path) is not UTF-8 text")
        }
        let format = SecretsDocument.format(of: path)
        let layout = layout(of: path)
        let envs: [String: [String: SecretValue]]
        if let sopsFormat = format.sops, let (body, metadata) = try Sops.parse(text, format: sopsFormat, file: path) {
            var opened = try Sops.open(body, metadata: metadata, identities: try sopsIdentities(), file: path)
            wipe(&opened.dataKey)
            envs = try SecretsDocument.envs(opened.entries, layout: layout, file: path)
        } else {
            // A plaintext file holds its values in clear: only its owner may read it. (A SOPS file's values are
            // encrypted; it may be as public as the git repository it comes from.)
            if !encrypted { try FileIO.requirePrivate(path, what: "plaintext secrets file") }
            envs = try SecretsDocument.parse(text, format: format, layout: layout, file: path)
        }
        loaded.withLock { $0[path] = LoadedFile(status: status, envs: envs) }
        logger.info(
            "loaded secrets file",
            metadata: ["store": "\(name)", "file": "\(path)", "envs": "\(envs.count)"])
        return (status, envs)
    }

    /// A file's layout: configured, else flat under `default` for dotenv files, else envs.
    func layout(of path: String) -> FileLayout {
        if let configured = settings.layouts[path] { return configured }
        return SecretsDocument.format(of: path) == .dotenv ? .flat(env: "default") : .envs
    }

    /// The identities that open a SOPS file: this store's (identity, passphrase), else where sops looks:
    /// SOPS_AGE_KEY_FILE, then SOPS_AGE_KEY, then ~/.config/sops/age/keys.txt.
    public func sopsIdentities(
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(SecretsError) -> [Identity] {
        if settings.identity != nil || settings.passphraseFile != nil { return try loadIdentities() }
        var text: String?
        var source = ""
        if let file = environment["SOPS_AGE_KEY_FILE"], !file.isEmpty {
            try FileIO.requirePrivate(file, what: "SOPS_AGE_KEY_FILE")
            text = try FileIO.readText(file)
            source = file
        } else if let inline = environment["SOPS_AGE_KEY"], !inline.isEmpty {
            text = inline
            source = "SOPS_AGE_KEY"
        } else if let home = environment["HOME"] {
            let file = home + "/.config/sops/age/keys.txt"
            if FileManager.default.fileExists(atPath: file) {
                try FileIO.requirePrivate(file, what: "sops age keys file")
                text = try FileIO.readText(file)
                source = file
            }
        }
        guard let text else {
            throw SecretsError(
                .invalidConfig,
                "store '\(name)' has no identity for SOPS files: set identity, or SOPS_AGE_KEY_FILE / SOPS_AGE_KEY, or ~/.config/sops/age/keys.txt")
        }
        do {
            return try X25519Identity.parseFile(text).map { Identity.x25519($0) }
        } catch {
            throw SecretsError(.decryptionFailed, "store '\(name)': \(source): \(error.message)")
        }
    }

    private func statusOrFail(_ path: String) throws(SecretsError) -> FileIO.Status {
        do {
            return try FileIO.status(path)
        } catch {
            // A missing file is a broken store, not a missing key.
            throw SecretsError(.storeUnavailable, "store '\(name)': \(error.message)")
        }
    }

    private func decrypt(_ bytes: [UInt8], path: String) throws(SecretsError) -> [UInt8] {
        let identities = try loadIdentities()
        do {
            return try AgeFile.decrypt(bytes, identities: identities)
        } catch {
            throw SecretsError(.decryptionFailed, "store '\(name)': cannot decrypt \(path): \(error.message)")
        }
    }

    /// The identities that open this store's files: the identity file and/or the passphrase file, both required
    /// to be private to this user.
    public func loadIdentities() throws(SecretsError) -> [Identity] {
        var identities: [Identity] = []
        if let identity = settings.identity {
            try FileIO.requirePrivate(identity, what: "identity file")
            let text = try FileIO.readText(identity)
            do {
                identities += try X25519Identity.parseFile(text).map { Identity.x25519($0) }
            } catch {
                throw SecretsError(.decryptionFailed, "store '\(name)': \(identity): \(error.message)")
            }
        }
        if let passphraseFile = settings.passphraseFile {
            let passphrase = try FileIO.readPassphrase(passphraseFile)
            identities.append(.scrypt(passphrase: passphrase, maxWorkFactor: settings.maxWorkFactor))
        }
        if identities.isEmpty {
            throw SecretsError(.invalidConfig, "store '\(name)' has neither identity nor passphrase_file")
        }
        return identities
    }

    /// Who `encrypt`, `edit` and `set` encrypt to: the configured recipients, else the identity's own recipient,
    /// else the passphrase.
    public func encryptionRecipients(workFactor: Int = 18) throws(SecretsError) -> [Recipient] {
        if !settings.recipients.isEmpty {
            var out: [Recipient] = []
            for text in settings.recipients {
                do {
                    out.append(.x25519(try X25519Recipient(string: text)))
                } catch {
                    throw SecretsError(.invalidConfig, "store '\(name)': bad recipient \(text)")
                }
            }
            return out
        }
        var out: [Recipient] = []
        for identity in try loadIdentities() {
            switch identity {
            case .x25519(let key): out.append(.x25519(key.recipient))
            case .scrypt(let passphrase, _): out.append(.scrypt(passphrase: passphrase, workFactor: workFactor))
            }
        }
        return out
    }

    // MARK: Watching

    public func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool {
        // Each watched file and the location it is: the store's own files are nil, a scope's file its path.
        var watched: [String: String?] = [:]
        for file in settings.files { watched[file] = .some(nil) }
        for location in locations {
            let path = FileIO.absolute(location, in: settings.directory)
            if watched[path] == nil { watched[path] = .some(location) }
        }
        let created = FileWatcher(paths: watched, logger: logger, onChange: onChange)
        guard let created else { return false }
        watcher.withLock { $0 = created }
        // A file replaced after it was read but before the watch existed raised no event: look once, now.
        let missed = watched.compactMap { path, location -> StoreChange? in
            guard let read = loaded.withLock({ $0[path]?.status }) else { return nil }
            return (try? FileIO.status(path)) == read ? nil : .at(location: location, env: nil)
        }
        if !missed.isEmpty { onChange(missed) }
        return true
    }

    public func close() {
        let current = watcher.withLock { state -> FileWatcher? in
            defer { state = nil }
            return state
        }
        current?.stop()
    }
}

/// Watches the folders of some files with inotify and calls back (debounced) when one of those files changes,
/// including atomic replacement by rename, as editors and `secretsfs edit` do.
final class FileWatcher: Sendable {
    private let descriptor: Int32
    private let running: Locked<Bool>
    private let done: Locked<Bool>

    /// `paths`: each file to watch and the store location it is (nil: the store's own files).
    init?(paths: [String: String?], logger: Logger, onChange: @escaping @Sendable ([StoreChange]) -> Void) {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { return nil }
        var watches: [Int32: [String: StoreChange]] = [:]
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MOVED_FROM)
        for (path, location) in paths {
            let url = URL(fileURLWithPath: path)
            let directory = url.deletingLastPathComponent().path
            let wd = inotify_add_watch(fd, directory, mask)
            if wd >= 0 { watches[wd, default: [:]][url.lastPathComponent] = .at(location: location, env: nil) }
        }
        guard !watches.isEmpty else {
            Glibc.close(fd)
            return nil
        }
        self.descriptor = fd
        self.running = Locked(true)
        self.done = Locked(false)
        let names = watches
        let thread = Thread { [self] in
            self.loop(names: names, onChange: onChange)
        }
        thread.name = "secretsfs-inotify"
        thread.start()
        logger.debug("watching secrets files with inotify", metadata: ["files": "\(paths.count)"])
    }

    private func loop(names: [Int32: [String: StoreChange]], onChange: @escaping @Sendable ([StoreChange]) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 16384)
        var pending: Set<StoreChange> = []
        while running.withLock({ $0 }) {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, pending.isEmpty ? 200 : 50)
            if ready <= 0 {
                if !pending.isEmpty {
                    onChange(Array(pending))
                    pending = []
                }
                continue
            }
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { continue }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= count {
                let (wd, length) = buffer.withUnsafeBytes { raw -> (Int32, Int) in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (event.wd, Int(event.len))
                }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                let nameBytes = buffer[nameStart..<min(nameStart + length, count)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                if let change = names[wd]?[name] { pending.insert(change) }
                offset = nameStart + length
            }
        }
        Glibc.close(descriptor)
        done.withLock { $0 = true }
    }

    func stop() {
        running.withLock { $0 = false }
        for _ in 0..<50 where !done.withLock({ $0 }) { usleep(10_000) }
    }
}
