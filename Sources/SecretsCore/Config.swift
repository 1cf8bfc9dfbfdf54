import Glibc

/// The whole config file: mount, cache, stores and scopes.
public struct Config: Sendable {
    public var file: String
    public var mount: MountConfig
    public var cache: CacheConfig
    public var stores: [StoreConfig]
    public var scopes: [ScopeConfig]
    /// `[[access]]` rules, in order.
    public var access: [AccessRule] = []
    public var audit = AuditConfig()
    /// `[metrics]`: where /metrics, /healthz and /status are served; nil: nowhere.
    public var metrics: MetricsListen?
    /// `[api]`: the Dapr-compatible secrets API; nil: off.
    public var api: ApiConfig?
    /// `[csi]`: the Kubernetes CSI node plugin; nil: off.
    public var csi: CSIConfig?
    /// `[[files]]`: whole-env files rendered at open.
    public var files: [RenderedFileConfig] = []

    /// Reads and validates a config file. Every problem names file, line, column and what is wrong.
    public static func load(path: String) throws(LocatedError) -> Config {
        let text: String
        do {
            text = try FileIO.readText(path)
        } catch {
            throw LocatedError(SourceLocation(file: path, line: 0, column: 0), "cannot read config: \(error)")
        }
        return try parse(text: text, file: path)
    }

    public static func parse(text: String, file: String) throws(LocatedError) -> Config {
        let document = try TOMLDocument(file: file, text: text)
        let root = ConfigSection(document: document, path: [], values: document.root)
        try root.rejectUnknown(allowed: ["mount", "cache", "stores", "scopes", "access", "audit", "metrics", "api", "files", "csi"])

        let mount = try MountConfig(root.section("mount"))
        let cache = try CacheConfig(root.section("cache"))

        var stores: [StoreConfig] = []
        let storesSection = try root.section("stores")
        for name in storesSection.keys {
            let section = try storesSection.section(name, required: true)
            try checkName(name, in: section)
            let store = try StoreConfig(name: name, section: section)
            try requireDirectoryEvents(store.layout, mount: mount, section: section)
            stores.append(store)
        }

        var scopes: [ScopeConfig] = []
        let scopesSection = try root.section("scopes")
        for name in scopesSection.keys {
            let section = try scopesSection.section(name, required: true)
            try checkName(name, in: section)
            if stores.contains(where: { $0.name == name }) {
                throw section.error(nil, "scope '\(name)' has the same name as a store; both would be /\(name)")
            }
            let scope = try ScopeConfig(name: name, section: section)
            try requireDirectoryEvents(scope.layout, mount: mount, section: section)
            for element in scope.chain where !stores.contains(where: { $0.name == element.store }) {
                throw section.error("chain", "scope '\(name)' names store '\(element.store)', which is not configured")
            }
            scopes.append(scope)
        }
        if stores.isEmpty {
            throw root.error("stores", "no stores configured: add a [stores.<name>] table")
        }
        var access: [AccessRule] = []
        switch root.values["access"] {
        case nil: break
        case .array(let items)?:
            for (index, item) in items.enumerated() {
                guard case .table(let fields) = item else {
                    throw root.error("access", "access rules are [[access]] tables")
                }
                access.append(
                    try AccessRule(ConfigSection.element(of: root.document, "access", index, values: fields), index: index))
            }
        default:
            throw root.error("access", "access rules are [[access]] tables")
        }
        var files: [RenderedFileConfig] = []
        switch root.values["files"] {
        case nil: break
        case .array(let items)?:
            for (index, item) in items.enumerated() {
                guard case .table(let fields) = item else { throw root.error("files", "rendered files are [[files]] tables") }
                let section = ConfigSection.element(of: root.document, "files", index, values: fields)
                let rendered = try RenderedFileConfig(section, index: index)
                let tops = Set(stores.map(\.name) + scopes.map(\.name))
                guard tops.contains(rendered.top) else {
                    throw section.error("path", "file #\(index + 1): '\(rendered.top)' is not a configured store or scope")
                }
                try rendered.checkReferences(section, tops: tops)
                files.append(rendered)
            }
        default:
            throw root.error("files", "rendered files are [[files]] tables")
        }
        var config = Config(file: file, mount: mount, cache: cache, stores: stores, scopes: scopes)
        config.access = access
        config.files = files
        config.audit = try AuditConfig(root.section("audit"))
        let metrics = try root.section("metrics")
        try metrics.rejectUnknown(allowed: ["listen"])
        if let listen = try metrics.string("listen") {
            guard let parsed = MetricsListen(listen, directory: metrics.directory) else {
                throw metrics.error("listen", "listen must be \"host:port\" (127.0.0.1:9464, [::1]:9464) or \"unix:/path\"")
            }
            config.metrics = parsed
        }
        if root.values["api"] != nil { config.api = try ApiConfig(root.section("api")) }
        if root.values["csi"] != nil { config.csi = try CSIConfig(root.section("csi")) }
        return config
    }

    static func checkName(_ name: String, in section: ConfigSection) throws(LocatedError) {
        let allowed = name.unicodeScalars.allSatisfy { scalar in
            (scalar.value < 128 && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)))
                || scalar == "-" || scalar == "_" || scalar == "."
        }
        if !allowed || name.isEmpty || name == "." || name == ".." {
            throw section.error(nil, "'\(name)' is not usable as a directory name (letters, digits, '-', '_', '.')")
        }
    }

    public func store(named name: String) -> StoreConfig? { stores.first { $0.name == name } }

    /// `layout = "kubernetes"` swaps `..data` through the mount, which only a mount with directory events allows.
    static func requireDirectoryEvents(
        _ layout: DirectoryLayout, mount: MountConfig, section: ConfigSection
    ) throws(LocatedError) {
        guard layout == .kubernetes, !mount.directoryEvents else { return }
        throw section.error(
            section.values["directory_layout"] != nil ? "directory_layout" : "layout",
            "layout = \"kubernetes\" needs directory_events = true in [mount] (it swaps ..data through the mount)")
    }
}

public struct MountConfig: Sendable {
    public var path: String
    public var allowOther: Bool
    public var uid: UInt32
    public var gid: UInt32
    public var fileMode: UInt32
    public var dirMode: UInt32
    /// Answer open with ENOSYS so the kernel stops sending opens and serves reads from its page cache.
    public var noOpen: Bool
    /// Have fusermount3 unmount when the daemon dies, so a killed daemon leaves no dead mount.
    public var autoUnmount: Bool
    /// Where the supervisor listens for an independent process that takes the mount over (`mount --take-over`, a
    /// DaemonSet's next pod); its directory is made 0700. nil: no takeovers.
    public var takeoverSocket: String?
    /// Make inotify watches on directories see changes: the daemon touches each changed name through its own mount
    /// (open for writing, set the mtime, close: IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE for the name), so the mount is
    /// made writable at the kernel and every other caller's change is refused by the daemon (EROFS).
    public var directoryEvents: Bool

    init(_ section: ConfigSection) throws(LocatedError) {
        try section.rejectUnknown(allowed: [
            "path", "allow_other", "uid", "gid", "file_mode", "dir_mode", "no_open", "auto_unmount", "takeover_socket",
            "directory_events",
        ])
        directoryEvents = try section.bool("directory_events") ?? false
        takeoverSocket = try section.path("takeover_socket")
        path = try section.path("path") ?? "/secrets"
        allowOther = try section.bool("allow_other") ?? false
        uid = try section.uint32("uid") ?? getuid()
        gid = try section.uint32("gid") ?? getgid()
        fileMode = try section.mode("file_mode") ?? 0o400
        dirMode = try section.mode("dir_mode") ?? 0o500
        noOpen = try section.bool("no_open") ?? true
        autoUnmount = try section.bool("auto_unmount") ?? true
    }
}

/// `[csi]`: a CSI node plugin (Identity and Node, CSI v1) on a unix socket, publishing inline ephemeral volumes
/// (`csi: { driver: ..., volumeAttributes: { path: <store or scope>/<env> } }`) as per-pod views of the mount.
public struct CSIConfig: Sendable {
    /// The unix socket kubelet (and the node-driver-registrar) dial.
    public var socket: String
    /// The driver name pods and the CSIDriver object use.
    public var driver: String
    /// This node's name for NodeGetInfo: the config's, else `$KUBE_NODE_NAME`, else the host name.
    public var nodeID: String?

    public static let defaultDriver = "csi.secretsfs.dev"

    init(_ section: ConfigSection) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["socket", "driver", "node_id"])
        guard let socket = try section.path("socket") else {
            throw section.error(nil, "[csi] needs socket = \"/csi/csi.sock\" (the plugin's unix socket)")
        }
        self.socket = socket
        driver = try section.string("driver") ?? Self.defaultDriver
        // A CSI driver name is a DNS-1123 subdomain of at most 63 characters.
        let valid = !driver.isEmpty && driver.count <= 63 && driver.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x2e
        } && driver.first != "." && driver.first != "-" && driver.last != "." && driver.last != "-"
        guard valid else {
            throw section.error("driver", "driver must be a DNS name of at most 63 characters (lower case), such as \(Self.defaultDriver)")
        }
        if let raw = try section.string("node_id") { nodeID = try section.expand(raw, key: "node_id") }
    }
}

/// `[api]`: Dapr's secrets API over HTTP (`GET /v1.0/secrets/<store>/<name>` and `/bulk`) and gRPC
/// (`dapr.proto.runtime.v1.Dapr/GetSecret` and `GetBulkSecret`).
public struct ApiConfig: Sendable {
    public var daprHTTP: MetricsListen?
    public var daprGRPC: MetricsListen?
    /// When set, requests must carry it in `dapr-api-token`.
    public var tokenFile: String?
    /// The env a request reads unless its `metadata.env` says otherwise.
    public var env: String
    /// Per store or scope: name globs a request may read, and ones it may not (denied wins).
    public var allowed: [String: [Glob]]
    public var denied: [String: [Glob]]

    init(_ section: ConfigSection) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["dapr_http", "dapr_grpc", "token_file", "env", "stores"])
        func listen(_ key: String) throws(LocatedError) -> MetricsListen? {
            guard let text = try section.string(key) else { return nil }
            guard let parsed = MetricsListen(text, directory: section.directory) else {
                throw section.error(key, "\(key) must be \"host:port\" or \"unix:/path\"")
            }
            return parsed
        }
        daprHTTP = try listen("dapr_http")
        daprGRPC = try listen("dapr_grpc")
        guard daprHTTP != nil || daprGRPC != nil else {
            throw section.error(
                nil, "[api] needs dapr_http = \"127.0.0.1:3500\" and/or dapr_grpc = \"127.0.0.1:50001\" (or \"unix:/path\")")
        }
        if let http = daprHTTP, http == daprGRPC {
            throw section.error("dapr_grpc", "dapr_http and dapr_grpc must be different addresses")
        }
        tokenFile = try section.path("token_file")
        env = try section.string("env") ?? "production"
        allowed = [:]
        denied = [:]
        let stores = try section.section("stores")
        for name in stores.keys {
            let store = try stores.section(name, required: true)
            try store.rejectUnknown(allowed: ["allowed", "denied"])
            if let globs = try store.stringArray("allowed") { allowed[name] = globs.map(Glob.init) }
            if let globs = try store.stringArray("denied") { denied[name] = globs.map(Glob.init) }
        }
    }

    /// Whether a request may read `name` from `store`: not denied, and allowed when the store has an allow list.
    public func permits(store: String, name: String) -> Bool {
        if denied[store]?.contains(where: { $0.matches(name) }) == true { return false }
        guard let list = allowed[store] else { return true }
        return list.contains { $0.matches(name) }
    }
}

/// Where the status server listens.
public enum MetricsListen: Sendable, Equatable {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public init?(_ text: String, directory: String) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { return nil }
            self = .unix(path: FileIO.absolute(path, in: directory))
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self = .tcp(host: host, port: port)
    }
}

public struct CacheConfig: Sendable {
    /// Seconds a cached (non-fresh) value is served before it is fetched again.
    public var ttl: Double
    /// Key globs fetched on every open.
    public var fresh: [String]
    /// Seconds a cached value may still be served when its store fails; 0 turns this off.
    public var staleIfError: Double
    /// Seconds a fetched fresh value may serve later opens (0: every open waits for a fetch that began after it).
    public var freshMaxAge: Double

    /// Where the worker keeps its cached views across restarts and reboots (age-encrypted), for a start during an
    /// outage; nil: off (the default).
    public var persist: String?
    /// The age identity file whose recipient the persisted cache is encrypted to: `persist_identity`, else the
    /// systemd credential `secretsfs-cache-identity`.
    public var persistIdentity: String?

    /// The systemd credential that holds the persisted cache's identity when `persist_identity` is not set.
    public static let persistCredential = "secretsfs-cache-identity"

    init(_ section: ConfigSection) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["ttl", "fresh", "stale_if_error", "fresh_max_age", "persist", "persist_identity"])
        ttl = try section.duration("ttl") ?? 300
        fresh = try section.stringArray("fresh") ?? []
        staleIfError = try section.duration("stale_if_error") ?? 600
        freshMaxAge = try section.duration("fresh_max_age") ?? 0
        persist = try section.path("persist")
        persistIdentity = try section.path("persist_identity")
        if persist == nil, persistIdentity != nil {
            throw section.error("persist_identity", "'cache.persist_identity' is set but 'cache.persist' is not")
        }
        // Without persist_identity: the systemd credential, when the unit passes credentials. Commands run outside
        // the unit (get, set) do not need it; the worker warns and serves without a persisted cache if none is found.
        if persist != nil, persistIdentity == nil, let directory = getenv("CREDENTIALS_DIRECTORY"),
            !String(cString: directory).isEmpty
        {
            persistIdentity = String(cString: directory) + "/" + Self.persistCredential
        }
    }
}

/// One `[stores.<name>]` table. Keys beyond `type` and `fresh` belong to the backend, which reads them from
/// `section` and must reject the ones it does not know.
public struct StoreConfig: Sendable {
    public var name: String
    public var type: String
    public var fresh: [String]
    public var freshMaxAge: Double?
    public var layout: DirectoryLayout
    public var section: ConfigSection

    init(name: String, section: ConfigSection) throws(LocatedError) {
        self.name = name
        guard let type = try section.string("type") else {
            throw section.error(nil, "store '\(name)' needs a type (file)")
        }
        self.layout = try DirectoryLayout(section, storeOwnsLayout: type == "file")
        self.type = type
        self.fresh = try section.stringArray("fresh") ?? []
        self.freshMaxAge = try section.duration("fresh_max_age")
        self.section = section
    }
}

/// One element of a scope's chain: a store, and optionally a location inside it that replaces the store's own
/// (for the file store a file path, for Vault a KV path, for Redis a key prefix).
public struct ChainElement: Sendable, Hashable {
    public var store: String
    public var path: String?
    /// The level's name (`level = "service"`); the store's name when not given. Unique within a scope.
    public var level: String

    public init(store: String, path: String? = nil, level: String? = nil) {
        self.store = store
        self.path = path
        self.level = level ?? store
    }
}

extension Config {
    /// The paths scope chains read store `name` at (`{ store = name, path = ... }`), each once, in config order.
    public func scopeLocations(of name: String) -> [String] {
        var seen: [String] = []
        for scope in scopes {
            for element in scope.chain where element.store == name {
                if let path = element.path, !seen.contains(path) { seen.append(path) }
            }
        }
        return seen
    }
}

public struct ScopeConfig: Sendable {
    public var name: String
    public var chain: [ChainElement]
    public var fresh: [String]
    public var freshMaxAge: Double?
    public var layout: DirectoryLayout

    /// Whether a chain item got its level name from its store.
    static func isDefaultNamed(_ item: SecretValue) -> Bool {
        if case .table(let fields) = item, fields["level"] != nil { return false }
        return true
    }

    init(name: String, section: ConfigSection) throws(LocatedError) {
        self.name = name
        try section.rejectUnknown(allowed: ["chain", "fresh", "fresh_max_age", "layout", "directory_layout"])
        guard case .array(let items)? = section.values["chain"], !items.isEmpty else {
            throw section.error("chain", "scope '\(name)' needs a non-empty chain = [\"store\", ...]")
        }
        var chain: [ChainElement] = []
        for item in items {
            switch item {
            case .string(let store):
                chain.append(ChainElement(store: store))
            case .table(let fields):
                guard case .string(let store)? = fields["store"] else {
                    throw section.error("chain", "a chain element table needs store = \"<name>\"")
                }
                var path: String?
                if let raw = fields["path"] {
                    guard case .string(let text) = raw else {
                        throw section.error("chain", "path in a chain element must be a string")
                    }
                    path = text
                }
                var level: String?
                if let raw = fields["level"] {
                    guard case .string(let text) = raw else {
                        throw section.error("chain", "level in a chain element must be a string")
                    }
                    level = text
                }
                if let unknown = fields.keys.first(where: { $0 != "store" && $0 != "path" && $0 != "level" }) {
                    throw section.error("chain", "unknown key '\(unknown)' in a chain element (store, path, level)")
                }
                chain.append(ChainElement(store: store, path: path, level: level))
            default:
                throw section.error("chain", "chain elements are store names or { store = ..., path = ... }")
            }
        }
        // Elements without a level are named after their store; when a store appears more than once that way (as
        // configs from before levels do), the later ones get their position: local, local-2, ...
        var taken: Set<String> = []
        for index in chain.indices {
            if Self.isDefaultNamed(items[index]) && taken.contains(chain[index].level) {
                chain[index].level += "-\(index + 1)"
            }
            taken.insert(chain[index].level)
        }
        var levels: Set<String> = []
        for element in chain {
            if let problem = EntryName.problem(element.level) {
                throw section.error("chain", "scope '\(name)': level names follow the path-name rule; one is \(problem)")
            }
            guard levels.insert(element.level).inserted else {
                throw section.error(
                    "chain",
                    "scope '\(name)' has two levels named '\(element.level)' (an element without level = \"...\" is named after its store)")
            }
        }
        self.chain = chain
        self.fresh = try section.stringArray("fresh") ?? []
        self.freshMaxAge = try section.duration("fresh_max_age")
        self.layout = try DirectoryLayout(section)
    }
}

/// `layout` of a store or scope: how its env directories look. `plain`: the keys. `kubernetes`: the keys and
/// `..data`, a symlink to the directory itself (`..data/KEY` is `KEY`) that is replaced through the mount at each
/// change (`..data_tmp` created, then renamed over `..data`), as kubelet's AtomicWriter does: watchers written for
/// that layout (a Create or IN_MOVED_TO of `..data`) work unchanged. Needs `[mount] directory_events`.
public enum DirectoryLayout: String, Sendable {
    case plain
    case kubernetes

    /// The name that is swapped, and the one it is made under first.
    public static let dataLink = "..data"
    public static let dataLinkTemporary = "..data_tmp"

    /// From `directory_layout`, else `layout`. A file store's `layout` also says how its files are laid out
    /// (`"envs"`, `"flat"`: `storeOwnsLayout`); such a store takes the kubelet layout from `directory_layout` when
    /// its `layout` is one of those.
    init(_ section: ConfigSection, storeOwnsLayout: Bool = false) throws(LocatedError) {
        if let raw = try section.string("directory_layout") {
            guard let layout = DirectoryLayout(rawValue: raw) else {
                throw section.error("directory_layout", "directory_layout must be \"plain\" or \"kubernetes\", not \"\(raw)\"")
            }
            self = layout
            return
        }
        guard let raw = try section.string("layout") else {
            self = .plain
            return
        }
        guard let layout = DirectoryLayout(rawValue: raw) else {
            if storeOwnsLayout {
                self = .plain
                return
            }
            throw section.error("layout", "layout must be \"plain\" or \"kubernetes\", not \"\(raw)\"")
        }
        self = layout
    }
}
