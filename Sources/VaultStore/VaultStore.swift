import Deadline
import Foundation
import Logging
import SecretsCore
import Locking

/// `type = "vault"`: KV v1 or v2 in Dynaconf's layout, env `<env>` at `<mount>/<path>/<env>`.
public final class VaultStore: WritableSecretStore {
    public let name: String
    public let settings: VaultSettings
    let http: HTTPClient
    let logger: Logger
    let tokens: TokenManager
    private let detectedVersion: Locked<VaultSettings.KVVersion?>
    private let envListing: Locked<[String: (envs: Set<String>, at: Double)]>
    /// The metadata watch's running flag, when one runs.
    private let watcher = Locked<RunningFlag?>(nil)
    /// The KV v2 version of each secret read before the watch's first poll ("<location>\u{0}<env>"; nil: none); nil
    /// after it. The worker serves before it watches: the first poll reports the secrets whose version differs from
    /// the one read, so a change in between is not missed until ttl.
    private let readBeforeWatch = Locked<[String: Int64?]?>([:])

    /// `environment` supplies VAULT_ADDR, VAULT_TOKEN and the other defaults (the process's own by default).
    public init(
        config: StoreConfig, logger: Logger, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(LocatedError) {
        name = config.name
        settings = try VaultSettings(config: config, environment: environment)
        self.logger = logger
        let store = config.name
        http = HTTPClient(
            settings: .init(
                timeout: settings.timeout, caFile: settings.caCert, skipVerify: settings.skipVerify,
                addresses: settings.addresses)
        ) { [logger] from, to, why in
            logger.warning(
                "Vault requests moved to another node", metadata: ["store": "\(store)", "from": "\(from)", "to": "\(to)", "why": "\(why)"])
        }
        tokens = TokenManager(
            settings: settings, http: http, store: config.name, logger: logger, environment: environment)
        detectedVersion = Locked(settings.kvVersion == .auto ? nil : settings.kvVersion)
        envListing = Locked([:])
        if settings.skipVerify {
            logger.warning(
                """
                TLS certificate verification is OFF for this Vault store (skip_verify / VAULT_SKIP_VERIFY): \
                anyone on the network path can read these secrets
                """, metadata: ["store": "\(name)"])
        }
    }

    // MARK: Requests

    /// A request with the token; on 403 it logs in again once and retries.
    func send(_ method: String, _ path: String, body: [UInt8]? = nil) throws(SecretsError) -> HTTPResponse {
        var response = try http.request(method, path, headers: try headers(), body: body)
        if response.status == 403 {
            logger.info("403 from Vault; logging in again", metadata: ["store": "\(name)", "path": "\(Self.plain(path))"])
            try tokens.relogin()
            response = try http.request(method, path, headers: try headers(), body: body)
            if response.status == 403 {
                throw SecretsError(.permissionDenied, "store '\(name)': \(method) \(Self.plain(path)): 403 permission denied")
            }
        }
        // 5xx never gets here: the client moves on to another node, or fails the request.
        return response
    }

    func headers() throws(SecretsError) -> [String: String] {
        var headers = ["X-Vault-Token": try tokens.token()]
        if let namespace = settings.namespace { headers["X-Vault-Namespace"] = namespace }
        return headers
    }

    static func plain(_ path: String) -> String { HTTPClient.redacted(path) }

    /// Percent-encodes each `/`-separated segment of a path: everything but RFC 3986's unreserved characters and the
    /// sub-delimiters, `:` and `@` that a path segment may hold.
    static func escape(_ path: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(path.utf8.count)
        for byte in path.utf8 {
            if pathSafe[Int(byte)] {
                out.append(byte)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            }
        }
        // Empty segments (`a//b`, a leading or trailing `/`) are dropped.
        return String(decoding: out, as: UTF8.self).split(separator: "/").joined(separator: "/")
    }

    /// Bytes left as they are by `escape`.
    private static let pathSafe: [Bool] = (0..<256).map { byte in
        let safe = Array("-._~!$&'()*+,;=:@/".utf8)
        return (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
            || safe.contains(UInt8(byte))
    }

    /// KV version: configured, or asked of `sys/internal/ui/mounts/<mount>` once; v2 when the server does not say.
    func kvVersion() -> VaultSettings.KVVersion {
        if let known = detectedVersion.withLock({ $0 }) { return known }
        var version = VaultSettings.KVVersion.v2
        if let response = try? send("GET", "/v1/sys/internal/ui/mounts/\(Self.escape(settings.mount))"),
            response.status == 200, case .table(let root)? = SecretValue.parseJSON(response.body),
            case .table(let data)? = root["data"], case .table(let options)? = data["options"],
            case .string(let text)? = options["version"], text == "1"
        {
            version = .v1
        }
        detectedVersion.withLock { $0 = version }
        logger.debug("KV version", metadata: ["store": "\(name)", "version": "\(version.rawValue)"])
        return version
    }

    func secretPath(_ env: String, at location: String?) -> String {
        let base = Self.escape(settings.mount)
        let path = Self.escape(location ?? settings.path)
        let leaf = Self.escape(env.lowercased())
        switch kvVersion() {
        case .v1: return "/v1/\(base)/\(path)/\(leaf)"
        default: return "/v1/\(base)/data/\(path)/\(leaf)"
        }
    }

    // MARK: SecretStore

    /// The bound of one operation on this store: its `timeout`, shared by every request inside (token login or
    /// renewal, the KV version check, LIST, GETs, a retry on another node).
    public var operationTimeout: Double? { settings.timeout }

    public func envs(at location: String?) throws(SecretsError) -> [String] {
        try OperationDeadline.within(settings.timeout) { () throws(SecretsError) in try fetchEnvs(at: location) }
    }

    /// The env names at a location from a LIST, kept as the listing `knownEnvs` uses.
    func fetchEnvs(at location: String?) throws(SecretsError) -> [String] {
        let base = Self.escape(settings.mount)
        let path = Self.escape(location ?? settings.path)
        let listPath = kvVersion() == .v1 ? "/v1/\(base)/\(path)" : "/v1/\(base)/metadata/\(path)"
        let response = try send("LIST", listPath)
        if response.status == 404 {
            let now = CoreClock.monotonic()
            envListing.withLock { $0[location ?? ""] = ([], now) }
            return []
        }
        guard response.status == 200, case .table(let root)? = SecretValue.parseJSON(response.body),
            case .table(let data)? = root["data"], case .array(let keys)? = data["keys"]
        else {
            throw SecretsError(.storeUnavailable, "store '\(name)': LIST \(listPath): HTTP \(response.status)")
        }
        let names = keys.compactMap { if case .string(let key) = $0, !key.hasSuffix("/") { key.lowercased() } else { nil } }
            .sorted()
        let now = CoreClock.monotonic()
        envListing.withLock { $0[location ?? ""] = (Set(names), now) }
        return names
    }

    public func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        try OperationDeadline.within(settings.timeout) { () throws(SecretsError) in
            let secret = try read(secretPath(env, at: location))
            readBeforeWatch.withLock { if $0 != nil { $0?[((location ?? "") + "\u{0}" + env).lowercased()] = .some(secret?.version) } }
            return secret?.fields
        }
    }

    /// The fields of one secret and its KV v2 version (for check-and-set); nil when it does not exist.
    func read(_ path: String) throws(SecretsError) -> (fields: [String: SecretValue], version: Int64?)? {
        try parseSecret(try send("GET", path), path: path)
    }

    func parseSecret(_ response: HTTPResponse, path: String) throws(SecretsError)
        -> (fields: [String: SecretValue], version: Int64?)?
    {
        if response.status == 404 { return nil }
        if response.status == 403 {
            throw SecretsError(.permissionDenied, "store '\(name)': GET \(Self.plain(path)): 403 permission denied")
        }
        guard response.status == 200, let decoded = Self.decodeSecretBody(response.body, v2: kvVersion() == .v2) else {
            throw SecretsError(.storeUnavailable, "store '\(name)': GET \(Self.plain(path)): HTTP \(response.status)")
        }
        switch decoded {
        case .deleted: return nil
        case .fields(let fields, let version): return (fields, version)
        }
    }

    public enum DecodedSecret: Sendable, Equatable {
        case fields([String: SecretValue], version: Int64?)
        /// A soft-deleted KV v2 secret: 200 with null data.
        case deleted
    }

    /// The fields of a KV read response body (v1: `data`; v2: `data.data` and `data.metadata.version`); nil when
    /// the body is not such a response. The body is untrusted input (and fuzzed).
    public static func decodeSecretBody(_ body: [UInt8], v2: Bool) -> DecodedSecret? {
        guard case .table(let root)? = SecretValue.parseJSON(body), case .table(let data)? = root["data"] else {
            return nil
        }
        if !v2 { return .fields(data, version: nil) }
        var version: Int64?
        if case .table(let metadata)? = data["metadata"], case .int(let number)? = metadata["version"] {
            version = number
        }
        guard case .table(let fields)? = data["data"] else { return .deleted }
        return .fields(fields, version: version)
    }

    /// Which envs exist at a location, from a LIST at most `envListingMaxAge` old. Only env *existence* is cached:
    /// values are always fetched.
    static let envListingMaxAge = 1.0

    /// Nil when the token may not LIST: then every layer is fetched.
    func knownEnvs(at location: String?) throws(SecretsError) -> Set<String>? {
        let key = location ?? ""
        let now = CoreClock.monotonic()
        if let cached = envListing.withLock({ $0[key] }), now - cached.at < Self.envListingMaxAge { return cached.envs }
        do {
            return Set(try envs(at: location))
        } catch where error.code == .permissionDenied {
            return nil
        }
    }

    /// A fresh lookup: the env's own secret is always fetched; `global`, `dynaconf` and `default` only when they exist
    /// (see `knownEnvs`). The layers up to the env are fetched at once (libcurl multi, keep-alive handles), the
    /// lower ones only when those do not have the key. Usually that is one GET.
    public func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        try OperationDeadline.within(settings.timeout) { () throws(SecretsError) in
            try lookup(key, layers: layers, at: location)
        }
    }

    func lookup(_ key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        let envLayer = layers.count == 4 ? layers[1] : layers.first
        let known = try knownEnvs(at: location)
        let wanted = layers.filter { $0 == envLayer || known?.contains($0.lowercased()) ?? true }
        let split = (wanted.firstIndex { $0 == envLayer } ?? 0) + 1
        for batch in [Array(wanted.prefix(split)), Array(wanted.dropFirst(split))] where !batch.isEmpty {
            let paths = batch.map { secretPath($0, at: location) }
            var responses = http.getAll(paths, headers: try headers())
            if responses.contains(where: { (try? $0.get())?.status == 403 }) {
                logger.info("403 from Vault; logging in again", metadata: ["store": "\(name)"])
                try tokens.relogin()
                responses = http.getAll(paths, headers: try headers())
            }
            for (index, result) in responses.enumerated() {
                let response = try result.get()
                if let fields = try parseSecret(response, path: paths[index])?.fields,
                    let value = Self.match(key, in: fields)
                {
                    return value
                }
            }
        }
        return nil
    }

    /// Merges `values` into the env's secret (KV v2: check-and-set on the version read; v1: read-modify-write).
    /// Unlike Dynaconf's writer, keys not named are kept.
    public func write(env: String, values: [(String, SecretValue)], at location: String? = nil) throws(SecretsError) {
        try update(env: env, at: location, set: values, remove: [], replace: false)
    }

    /// Sets and removes keys (or, with `replace`, makes the secret hold exactly `set`) in one check-and-set write.
    public func update(env: String, at location: String?, set values: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError)
    {
        let path = secretPath(env, at: location)
        for attempt in 0..<3 {
            let current = try read(path)
            var fields = replace ? [:] : current?.fields ?? [:]
            for key in remove {
                for existing in fields.keys where existing.lowercased() == key.lowercased() { fields.removeValue(forKey: existing) }
            }
            for (key, value) in values { fields[key] = value }
            let body: SecretValue =
                kvVersion() == .v1
                ? .table(fields)
                : .table(["data": .table(fields), "options": .table(["cas": .int(current?.version ?? 0)])])
            var bytes = Array(body.jsonText().utf8)
            defer { wipe(&bytes) }
            let response = try send("POST", path, body: bytes)
            if (200..<300).contains(response.status) { return }
            if response.status == 400, attempt < 2,
                String(decoding: response.body, as: UTF8.self).contains("check-and-set")
            {
                continue  // someone wrote in between: read again and merge again
            }
            throw SecretsError(.storeUnavailable, "store '\(name)': POST \(Self.plain(path)): HTTP \(response.status)")
        }
        throw SecretsError(.storeUnavailable, "store '\(name)': \(Self.plain(path)) kept changing; not written")
    }

    /// With `watch = "2s"` (KV v2): every interval, one LIST of each watched location and one metadata GET per env
    /// there; an env whose `current_version` changed, or that appeared or went, is reported. KV v1 has no versions:
    /// no watch, ttl only.
    public func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool {
        guard let interval = settings.watch, kvVersion() == .v2 else {
            readBeforeWatch.withLock { $0 = nil }
            return false
        }
        let watched: [String?] = [nil] + locations.map { Optional($0) }
        let flag = RunningFlag()
        watcher.withLock { $0 = flag }
        let thread = Thread { [self] in
            var versions: [String: Int64] = [:]  // "<location>\u{0}<env>" -> current_version
            var first = true
            while flag.running.withLock({ $0 }) {
                var changes: [StoreChange] = []
                let readBefore = first ? readBeforeWatch.withLock { state -> [String: Int64?] in
                    defer { state = nil }
                    return state ?? [:]
                } : [:]
                var seen: Set<String> = []
                for location in watched {
                    guard let envs = try? listEnvs(at: location) else { continue }
                    for env in envs {
                        let key = (location ?? "") + "\u{0}" + env
                        seen.insert(key)
                        guard let version = try? currentVersion(env, at: location) else { continue }
                        if versions[key] != version {
                            // On the first poll: only what changed since this worker read it.
                            var changedSinceRead = false
                            if case .some(let then) = readBefore[key.lowercased()] { changedSinceRead = then != version }
                            if !first || changedSinceRead {
                                changes.append(.at(location: location, env: env))
                            }
                            versions[key] = version
                        }
                    }
                }
                // Read before the first poll, gone by it.
                let seenFolded = Set(seen.map { $0.lowercased() })
                for (key, version) in readBefore where version != nil && !seenFolded.contains(key) {
                    let parts = key.split(separator: "\u{0}", omittingEmptySubsequences: false)
                    let location = parts.first.map(String.init).flatMap { $0.isEmpty ? nil : $0 }
                    changes.append(.at(location: location, env: parts.count > 1 ? String(parts[1]) : nil))
                }
                for gone in versions.keys where !seen.contains(gone) {
                    versions.removeValue(forKey: gone)
                    let parts = gone.split(separator: "\u{0}", omittingEmptySubsequences: false)
                    let location = parts.first.map(String.init).flatMap { $0.isEmpty ? nil : $0 }
                    changes.append(.at(location: location, env: parts.count > 1 ? String(parts[1]) : nil))
                }
                first = false
                if !changes.isEmpty { onChange(changes) }
                let end = CoreClock.monotonic() + interval
                while flag.running.withLock({ $0 }) && CoreClock.monotonic() < end { usleep(20_000) }
            }
        }
        thread.name = "secretsfs-vault-watch"
        thread.start()
        logger.debug("watching Vault metadata", metadata: ["store": "\(name)", "interval": "\(interval)"])
        return true
    }

    /// The env names at a location, straight from a LIST (no listing cache: the watch must see new and gone envs).
    func listEnvs(at location: String?) throws(SecretsError) -> [String] {
        let listPath = "/v1/\(Self.escape(settings.mount))/metadata/\(Self.escape(location ?? settings.path))"
        let response = try send("LIST", listPath)
        if response.status == 404 { return [] }
        guard response.status == 200, case .table(let root)? = SecretValue.parseJSON(response.body),
            case .table(let data)? = root["data"], case .array(let keys)? = data["keys"]
        else { throw SecretsError(.storeUnavailable, "store '\(name)': LIST: HTTP \(response.status)") }
        return keys.compactMap { if case .string(let key) = $0, !key.hasSuffix("/") { key.lowercased() } else { nil } }
    }

    /// A KV v2 secret's `current_version` from its metadata.
    func currentVersion(_ env: String, at location: String?) throws(SecretsError) -> Int64? {
        let path = "/v1/\(Self.escape(settings.mount))/metadata/\(Self.escape(location ?? settings.path))/\(Self.escape(env))"
        let response = try send("GET", path)
        guard response.status == 200, case .table(let root)? = SecretValue.parseJSON(response.body),
            case .table(let data)? = root["data"], case .int(let version)? = data["current_version"]
        else { return nil }
        return version
    }

    public func close() {
        watcher.withLock { $0?.running.withLock { $0 = false } }
        http.close()
    }
}

/// A background loop's "keep going" flag, shared between the loop and `close`.
final class RunningFlag: Sendable {
    let running = Locked(true)
}
