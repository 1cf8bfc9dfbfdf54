import Foundation
import Deadline
import Logging
import RedisClient
import SecretsCore
import Locking

/// Settings of a Redis store, read from its `[stores.<name>]` table.
public struct RedisStoreSettings: Sendable {
    /// The server (for a Sentinel URL: timeout, TLS and credentials for whichever node is master).
    public var settings: RedisSettings
    /// Set for `redis+sentinel://` URLs.
    public var sentinel: SentinelEndpoint?
    public var prefix: String
    /// Behind Sentinel: whether reads go to a replica the sentinels list while the master cannot be reached
    /// (`replica_reads = "failover"`, the default) or fail until a master answers (`"never"`).
    public var replicaReads = true

    public init(config: StoreConfig, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws(LocatedError)
    {
        let section = config.section
        try section.rejectUnknown(allowed: [
            "type", "fresh", "fresh_max_age", "layout", "directory_layout", "url", "password_file", "username", "ca_cert", "prefix", "timeout",
            "sentinel_password_file", "replica_reads",
        ])
        let url = try section.string("url") ?? environment["REDIS_URL"] ?? "redis://127.0.0.1:6379/0"
        var endpoint: RedisEndpoint
        if SentinelEndpoint.isSentinelURL(url) {
            var parsed: SentinelEndpoint
            do {
                parsed = try SentinelEndpoint(url: url)
            } catch {
                throw section.error("url", "store '\(config.name)': \(error.message)")
            }
            if let file = try section.path("sentinel_password_file") {
                do {
                    parsed.sentinelPassword = String(decoding: try FileIO.readPassphrase(file), as: UTF8.self)
                } catch {
                    throw section.error("sentinel_password_file", "store '\(config.name)': \(error.message)")
                }
            }
            sentinel = parsed
            endpoint = RedisEndpoint(
                address: parsed.sentinels[0], tls: parsed.tls, username: parsed.username, password: parsed.password,
                database: parsed.database)
        } else {
            if section.values["sentinel_password_file"] != nil {
                throw section.error("sentinel_password_file", "sentinel_password_file needs a redis+sentinel:// url")
            }
            do {
                endpoint = try RedisEndpoint(url: url)
            } catch {
                throw section.error("url", "store '\(config.name)': \(error.message)")
            }
        }
        if let username = try section.string("username") { endpoint.username = username }
        if let passwordFile = try section.path("password_file") {
            do {
                endpoint.password = String(decoding: try FileIO.readPassphrase(passwordFile), as: UTF8.self)
            } catch {
                throw section.error("password_file", "store '\(config.name)': \(error.message)")
            }
        }
        let timeout = try section.duration("timeout") ?? 2
        guard timeout > 0 else { throw section.error("timeout", "timeout must be more than 0") }
        settings = RedisSettings(endpoint: endpoint, timeout: timeout, caFile: try section.path("ca_cert"))
        switch try section.string("replica_reads") ?? "failover" {
        case "failover": replicaReads = true
        case "never": replicaReads = false
        case let other:
            throw section.error("replica_reads", "replica_reads must be \"failover\" or \"never\", not \"\(other)\"")
        }
        prefix = try section.string("prefix") ?? "DYNACONF"
        guard !prefix.isEmpty, !prefix.contains(where: { "*?[]".contains($0) }) else {
            throw section.error("prefix", "prefix must be non-empty and without glob characters")
        }
    }
}

/// `type = "redis"`: Dynaconf's Redis layout, one hash `<PREFIX>_<ENV>` per env.
public final class RedisStore: WritableSecretStore {
    public let name: String
    public let configuration: RedisStoreSettings
    let pool: RedisPool
    let logger: Logger
    private let watcher: Locked<KeyspaceWatcher?>
    /// The master a replica read was last logged for.
    private let replicaNotice = Locked<String?>(nil)
    /// A fingerprint (FNV-1a, never a value) of each hash read before the keyspace subscription was confirmed; nil
    /// after. The worker serves before it watches: a hash changed between a read and the subscription raised no
    /// notice, so once subscribed, those hashes are read again and the ones that differ are reported.
    private let readBeforeWatch = Locked<[String: UInt64]?>([:])

    public init(config: StoreConfig, logger: Logger) throws(LocatedError) {
        self.name = config.name
        self.configuration = try RedisStoreSettings(config: config)
        if let sentinel = configuration.sentinel {
            self.pool = RedisPool(
                target: RedisTarget(sentinel: sentinel, timeout: configuration.settings.timeout, caFile: configuration.settings.caFile))
        } else {
            self.pool = RedisPool(settings: configuration.settings)
        }
        self.logger = logger
        self.watcher = Locked(nil)
    }

    /// The hash holding an env: `<PREFIX>_<ENV>`; a scope's `path` replaces the prefix.
    func hash(_ env: String, at location: String?) -> String {
        "\(location ?? configuration.prefix)_\(env.uppercased())"
    }

    func fail(_ error: RedisError) -> SecretsError {
        let code: SecretsError.Code =
            switch error.kind {
            case .timeout: .timeout
            case .authentication: .permissionDenied
            default: .storeUnavailable
            }
        return SecretsError(code, "store '\(name)': \(error.message)")
    }

    /// One pool call within the store's `timeout` in total (connect, AUTH, a retry on a new connection and the
    /// commands share it), or within the deadline of the operation around it, when earlier.
    func run<T>(read: Bool = false, _ body: (RedisConnection) throws(RedisError) -> T) throws(SecretsError) -> T {
        let fallback = read && configuration.replicaReads
        do {
            return try OperationDeadline.within(configuration.settings.timeout) { () throws(RedisError) in
                try pool.withConnection(replicaFallback: fallback, onReplica: replicaAnswered, body)
            }
        } catch {
            throw fail(error)
        }
    }

    /// A read went to a replica: said once per master (per failover), not per read.
    func replicaAnswered(_ replica: String) {
        let master = pool.target.describeMaster()
        let first = replicaNotice.withLock { noticed -> Bool in
            defer { noticed = master }
            return noticed != master
        }
        if first {
            logger.warning(
                "the Redis master cannot be reached; reads go to a replica until it answers",
                metadata: ["store": "\(name)", "master": "\(master)", "replica": "\(replica)"])
        }
    }

    /// The bound of one operation on this store (the core bounds a whole read by it).
    public var operationTimeout: Double? { configuration.settings.timeout }

    public func envs(at location: String?) throws(SecretsError) -> [String] {
        let prefix = (location ?? configuration.prefix) + "_"
        let keys: [String] = try run(read: true) { connection throws(RedisError) in
            var cursor = "0"
            var found: [String] = []
            repeat {
                let reply = try connection.command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000", "TYPE", "hash")
                guard case .array(let parts?) = reply, parts.count == 2, let next = parts[0].text,
                    case .array(let names?) = parts[1]
                else {
                    if case .error(let message) = reply { throw RedisError(.server, "SCAN failed: \(message)") }
                    throw RedisError(.protocolViolation, "unexpected SCAN reply")
                }
                found += names.compactMap(\.text)
                cursor = next
            } while cursor != "0"
            return found
        }
        return Array(Set(keys.filter { $0.count > prefix.count }.map { String($0.dropFirst(prefix.count)).lowercased() }))
            .sorted()
    }

    public func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        let hash = hash(env, at: location)
        let reply = try run(read: true) { connection throws(RedisError) in try connection.command("HGETALL", hash) }
        readBeforeWatch.withLock { if $0 != nil { $0?[hash] = Self.fingerprint(reply) } }
        return try decodeHash(reply, hash: hash)
    }

    /// FNV-1a over an HGETALL reply's items (length-prefixed), to tell whether a hash changed.
    static func fingerprint(_ reply: RESPValue) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ byte: UInt8) {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        guard case .array(let items?) = reply else { return 0 }
        for item in items {
            let bytes = item.bytes ?? []
            withUnsafeBytes(of: UInt64(bytes.count).littleEndian) { $0.forEach(mix) }
            bytes.forEach(mix)
        }
        return hash
    }

    /// The hashes read before the subscription that differ now (or cannot be read); stops recording.
    func changedSinceRead() -> [String] {
        let recorded = readBeforeWatch.withLock { state -> [String: UInt64] in
            defer { state = nil }
            return state ?? [:]
        }
        return recorded.compactMap { hash, before in
            let now = try? run(read: true) { connection throws(RedisError) in try connection.command("HGETALL", hash) }
            return now.map(Self.fingerprint) == before ? nil : hash
        }
    }

    func decodeHash(_ reply: RESPValue, hash: String) throws(SecretsError) -> [String: SecretValue]? {
        switch reply {
        case .array(let items?):
            if items.isEmpty { return nil }
            var fields: [String: SecretValue] = [:]
            var index = 0
            while index + 1 < items.count {
                if let key = items[index].text, let raw = items[index + 1].bytes {
                    fields[key] = DynaconfTokens.decode(raw)
                }
                index += 2
            }
            return fields
        case .error(let message) where message.hasPrefix("WRONGTYPE"):
            return nil
        case .error(let message):
            throw SecretsError(.storeUnavailable, "store '\(name)': HGETALL \(hash) failed: \(message)")
        default:
            throw SecretsError(.storeUnavailable, "store '\(name)': unexpected reply to HGETALL \(hash)")
        }
    }

    /// One round trip for the common case: HGET of the key in every layer, pipelined. Only when no layer has the
    /// exact key are the layers fetched whole to match it ignoring case.
    public func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        try OperationDeadline.within(configuration.settings.timeout) { () throws(SecretsError) in try lookup(key, layers: layers, at: location) }
    }

    func lookup(_ key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        let hashes = layers.map { hash($0, at: location) }
        let replies = try run(read: true) { connection throws(RedisError) in
            try connection.pipeline(hashes.map { [Array("HGET".utf8), Array($0.utf8), Array(key.utf8)] })
        }
        for reply in replies {
            switch reply {
            case .bulk(let raw?): return DynaconfTokens.decode(raw)
            case .error(let message) where !message.hasPrefix("WRONGTYPE"):
                throw SecretsError(.storeUnavailable, "store '\(name)': HGET failed: \(message)")
            default: continue
            }
        }
        let whole = try run(read: true) { connection throws(RedisError) in
            try connection.pipeline(hashes.map { [Array("HGETALL".utf8), Array($0.utf8)] })
        }
        for (index, reply) in whole.enumerated() {
            if let fields = try decodeHash(reply, hash: hashes[index]), let value = Self.match(key, in: fields) {
                return value
            }
        }
        return nil
    }

    /// Sets, removes or replaces keys of one env's hash in one transaction (MULTI/EXEC): values as Dynaconf's
    /// tokens, so structured ones read back as JSON. `replace` makes the hash hold exactly `set`.
    public func update(env: String, at location: String?, set: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError)
    {
        let hash = Array(hash(env, at: location).utf8)
        var commands: [[[UInt8]]] = [[Array("MULTI".utf8)]]
        if replace { commands.append([Array("DEL".utf8), hash]) }
        if !remove.isEmpty { commands.append([Array("HDEL".utf8), hash] + remove.map { Array($0.utf8) }) }
        if !set.isEmpty {
            var hset: [[UInt8]] = [Array("HSET".utf8), hash]
            for (key, value) in set { hset += [Array(key.utf8), Array(DynaconfTokens.encode(value).utf8)] }
            commands.append(hset)
        }
        commands.append([Array("EXEC".utf8)])
        var replies = try run { connection throws(RedisError) in try connection.pipeline(commands) }
        // A master demoted to replica answers READONLY: behind Sentinel, find the new master and write there.
        if pool.target.sentinel != nil, replies.contains(where: { if case .error(let m) = $0 { m.hasPrefix("READONLY") } else { false } }),
            (try? pool.target.refresh()) == true
        {
            pool.drain()
            replies = try run { connection throws(RedisError) in try connection.pipeline(commands) }
        }
        for reply in replies {
            if case .error(let message) = reply {
                throw SecretsError(.storeUnavailable, "store '\(name)': writing \(String(decoding: hash, as: UTF8.self)) failed: \(message)")
            }
        }
    }

    /// Writes fields into one env's hash (HSET merges, like Dynaconf's writer).
    public func write(env: String, fields: [(String, [UInt8])], at location: String? = nil) throws(SecretsError) {
        let hash = hash(env, at: location)
        var arguments: [[UInt8]] = [Array("HSET".utf8), Array(hash.utf8)]
        for (key, value) in fields { arguments += [Array(key.utf8), value] }
        let reply = try run { connection throws(RedisError) in try connection.command(arguments) }
        if case .error(let message) = reply {
            throw SecretsError(.storeUnavailable, "store '\(name)': HSET \(hash) failed: \(message)")
        }
    }

    public func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool {
        var prefixes = [configuration.prefix]
        for prefix in locations where !prefixes.contains(prefix) { prefixes.append(prefix) }
        let own = configuration.prefix
        // A changed hash `<PREFIX>_<ENV>` is that env at that location; the longest matching prefix names it.
        let byLength = prefixes.sorted { $0.count > $1.count }
        let describe: @Sendable (String) -> StoreChange = { hash in
            for prefix in byLength where hash.hasPrefix(prefix + "_") {
                let env = String(hash.dropFirst(prefix.count + 1)).lowercased()
                return .at(location: prefix == own ? nil : prefix, env: env)
            }
            return .all
        }
        if configuration.sentinel != nil {
            let pool = pool
            pool.target.startMonitoring { [logger, name] master in
                logger.warning("the Redis master moved (Sentinel)", metadata: ["store": "\(name)", "master": "\(master)"])
                pool.drain()
            }
        }
        let created = KeyspaceWatcher(
            target: pool.target, prefixes: prefixes, store: name, logger: logger,
            describe: describe, onChange: onChange, onFirstSubscribed: { [self] in changedSinceRead() })
        guard let created else {
            readBeforeWatch.withLock { $0 = nil }
            return false
        }
        watcher.withLock { $0 = created }
        return true
    }

    public func close() {
        let current = watcher.withLock { state -> KeyspaceWatcher? in
            defer { state = nil }
            return state
        }
        current?.stop()
        pool.close()
    }
}

/// Leading and trailing whitespace off, without Foundation: `trimmingCharacters(in: .whitespaces)` goes through
/// `CharacterSet`, which crashed (abort in the runtime's metadata lookup) when several threads decoded tokens at
/// once (found by the fuzz regression tests running targets in parallel). Reads decode tokens on many threads.
func trimmed(_ text: Substring) -> Substring {
    let start = text.firstIndex { !$0.isWhitespace } ?? text.endIndex
    let end = text[start...].lastIndex { !$0.isWhitespace }.map { text.index(after: $0) } ?? start
    return text[start..<end]
}

/// Dynaconf's Redis type tokens: `@int 1234`, `@float 1.5`, `@bool True`, `@json {...}`, `@none `, `@str 007`.
/// Untagged values and other `@tokens` (`@format`, `@jinja`, `@merge`, ...) are served exactly as stored, and so is a
/// token whose payload does not parse (Dynaconf would drop the whole hash).
public enum DynaconfTokens {
    public static func decode(_ raw: [UInt8]) -> SecretValue {
        guard let text = String(validating: raw, as: UTF8.self) else { return .bytes(raw) }
        guard text.hasPrefix("@") else { return .string(text) }
        let token: Substring
        let payload: Substring
        if let space = text.firstIndex(of: " ") {
            token = text[..<space]
            payload = text[text.index(after: space)...]
        } else {
            token = Substring(text)
            payload = ""
        }
        switch token {
        case "@int":
            return Int64(trimmed(payload)).map(SecretValue.int) ?? .string(text)
        case "@float":
            return Double(trimmed(payload)).map(SecretValue.float) ?? .string(text)
        case "@bool":
            switch trimmed(payload).lowercased() {
            case "true", "1", "yes", "on": return .bool(true)
            case "false", "0", "no", "off", "": return .bool(false)
            default: return .string(text)
            }
        case "@json":
            return SecretValue.parseJSON(Array(payload.utf8)) ?? .string(text)
        case "@none":
            return .null
        case "@str":
            return .string(String(payload))
        default:
            return .string(text)
        }
    }

    /// Dynaconf's encoding of a typed value, for `write --typed`.
    public static func encode(_ value: SecretValue) -> String {
        switch value {
        case .string(let text): return text.hasPrefix("@") ? "@str " + text : text
        case .int(let number): return "@int \(number)"
        case .float(let number): return "@float \(number)"
        case .bool(let flag): return "@bool \(flag ? "True" : "False")"
        case .null: return "@none "
        default: return "@json \(value.jsonText())"
        }
    }
}
