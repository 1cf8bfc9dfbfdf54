import Foundation
import Locking

/// `redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>/<db>` (`rediss+sentinel://` for TLS to
/// the data nodes): the sentinels to ask, the master's name, and how to talk to the data nodes. The credentials are
/// the data nodes'; sentinels that need their own password get it separately (`sentinel_password_file`).
public struct SentinelEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var sentinels: [RedisEndpoint.Address]
    public var masterName: String
    public var database: Int
    public var tls: Bool
    public var username: String?
    public var password: String?
    /// AUTH for the sentinels themselves.
    public var sentinelPassword: String?

    public static func isSentinelURL(_ url: String) -> Bool {
        url.hasPrefix("redis+sentinel://") || url.hasPrefix("rediss+sentinel://")
    }

    /// Parses the URL; errors never repeat it (it may hold a password).
    public init(url: String) throws(RedisError) {
        func fail(_ why: String) -> RedisError { RedisError(.connection, "invalid Redis Sentinel URL: \(why)") }
        var rest: Substring
        if url.hasPrefix("rediss+sentinel://") {
            tls = true
            rest = url.dropFirst("rediss+sentinel://".count)
        } else if url.hasPrefix("redis+sentinel://") {
            tls = false
            rest = url.dropFirst("redis+sentinel://".count)
        } else {
            throw fail("scheme must be redis+sentinel:// or rediss+sentinel://")
        }
        (username, password) = RedisEndpoint.takeCredentials(&rest)
        let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 2, !parts[1].isEmpty else {
            throw fail("the master's name is missing: redis+sentinel://host:26379,host2:26379/<master-name>/<db>")
        }
        guard parts.count <= 3 else { throw fail("too many path segments after the master's name") }
        masterName = RedisEndpoint.percentDecoded(parts[1])
        database = 0
        if parts.count == 3, !parts[2].isEmpty {
            guard let value = Int(parts[2]), value >= 0 else { throw fail("database must be a number") }
            database = value
        }
        var list: [RedisEndpoint.Address] = []
        for host in parts[0].split(separator: ",", omittingEmptySubsequences: false) {
            guard !host.isEmpty else { throw fail("an empty sentinel address") }
            var name = String(host)
            var port = 26379
            if name.hasPrefix("["), let close = name.firstIndex(of: "]") {
                let after = name[name.index(after: close)...]
                if after.hasPrefix(":") {
                    guard let value = Int(after.dropFirst()), (1...65535).contains(value) else {
                        throw fail("bad sentinel port")
                    }
                    port = value
                }
                name = String(name[name.index(after: name.startIndex)..<close])
            } else if let colon = name.lastIndex(of: ":") {
                guard let value = Int(name[name.index(after: colon)...]), (1...65535).contains(value) else {
                    throw fail("bad sentinel port")
                }
                port = value
                name = String(name[..<colon])
            }
            guard !name.isEmpty else { throw fail("a sentinel address without a host") }
            list.append(.tcp(host: name, port: port))
        }
        sentinels = list
    }

    /// The sentinels and the master's name; never a password.
    public var description: String {
        let hosts = sentinels.map { address -> String in
            if case .tcp(let host, let port) = address { return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
            return "\(address)"
        }
        return "\(tls ? "rediss" : "redis")+sentinel://\(hosts.joined(separator: ","))/\(masterName)/\(database)"
    }
}

/// Where the data node is: a fixed server, or the master the sentinels name now. Readers take `settings` for each
/// new connection; `generation` changes whenever the master moves, so connections to the old one are dropped.
public final class RedisTarget: Sendable {
    struct State {
        var settings: RedisSettings
        var generation: Int
    }

    let state: Locked<State>
    public let sentinel: SentinelEndpoint?
    /// Timeout and CA file for every connection, data node or sentinel.
    let template: RedisSettings
    let monitor = Locked<RunningFlag?>(nil)
    let lastRefresh = Locked<Double>(0)
    /// Called after the master moved, however that was found (a `+switch-master`, or a failure that made us ask).
    let onMove = Locked<(@Sendable (String) -> Void)?>(nil)
    /// The healthy replicas the sentinels listed last, for the moments they list none (a replica being promoted
    /// shows as disconnected for a while).
    let lastReplicas = Locked<[RedisSettings]>([])

    public init(fixed settings: RedisSettings) {
        state = Locked(State(settings: settings, generation: 0))
        sentinel = nil
        template = settings
    }

    /// Sentinel mode: no master is known until `refresh` finds one.
    public init(sentinel: SentinelEndpoint, timeout: Double, caFile: String?) {
        self.sentinel = sentinel
        let placeholder = RedisEndpoint(
            address: sentinel.sentinels.first ?? .tcp(host: "127.0.0.1", port: 26379), tls: sentinel.tls,
            username: sentinel.username, password: sentinel.password, database: sentinel.database)
        template = RedisSettings(endpoint: placeholder, timeout: timeout, caFile: caFile)
        state = Locked(State(settings: template, generation: -1))
    }

    public var settings: RedisSettings { state.withLock { $0.settings } }
    public var generation: Int { state.withLock { $0.generation } }

    /// The current data node's settings, asking the sentinels first if no master is known yet.
    public func connectionSettings() throws(RedisError) -> (RedisSettings, Int) {
        let current = state.withLock { ($0.settings, $0.generation) }
        if sentinel == nil || current.1 >= 0 { return current }
        _ = try refresh()
        return state.withLock { ($0.settings, $0.generation) }
    }

    func settings(forSentinel address: RedisEndpoint.Address) -> RedisSettings {
        RedisSettings(
            endpoint: RedisEndpoint(address: address, tls: false, password: sentinel?.sentinelPassword),
            timeout: template.timeout, caFile: template.caFile)
    }

    func dataSettings(host: String, port: Int) -> RedisSettings {
        var endpoint = template.endpoint
        endpoint.address = .tcp(host: host, port: port)
        return RedisSettings(endpoint: endpoint, timeout: template.timeout, caFile: template.caFile)
    }

    /// Asks the sentinels, in turn, for the master (`SENTINEL get-master-addr-by-name`) and checks it with `ROLE`;
    /// moves readers there. Returns whether the master moved. Throws when no sentinel names a reachable master.
    @discardableResult
    public func refresh() throws(RedisError) -> Bool {
        guard let sentinel else { return false }
        lastRefresh.withLock { $0 = Self.now() }
        var reasons: [String] = []
        for address in sentinel.sentinels {
            do {
                let connection = try RedisConnection(settings(forSentinel: address))
                defer { connection.close() }
                let reply = try connection.command("SENTINEL", "get-master-addr-by-name", sentinel.masterName)
                guard case .array(let parts?) = reply, parts.count == 2, let host = parts[0].text,
                    let portText = parts[1].text, let port = Int(portText)
                else {
                    if case .error(let message) = reply { reasons.append("\(address): \(message)") } else {
                        reasons.append("\(address) does not know master '\(sentinel.masterName)'")
                    }
                    continue
                }
                let candidate = dataSettings(host: host, port: port)
                let node = try RedisConnection(candidate)
                defer { node.close() }
                guard case .array(let role?) = try node.command("ROLE"), role.first?.text == "master" else {
                    reasons.append("\(host):\(port) named by \(address) is not a master (yet)")
                    continue
                }
                return moveTo(candidate)
            } catch {
                reasons.append(error.message)
            }
        }
        throw RedisError(
            .connection, "no master '\(sentinel.masterName)' from the sentinels: \(reasons.joined(separator: "; "))")
    }

    /// Asks again only if the last ask was more than `interval` seconds ago (many readers failing at once ask once).
    public func refreshIfDue(interval: Double = 0.2) -> Bool {
        guard sentinel != nil else { return false }
        let due = lastRefresh.withLock { last -> Bool in
            let now = Self.now()
            guard now - last >= interval else { return false }
            last = now
            return true
        }
        guard due else { return false }
        return (try? refresh()) ?? false
    }

    func moveTo(_ settings: RedisSettings) -> Bool {
        let (moved, first) = state.withLock { state -> (Bool, Bool) in
            if state.generation >= 0 && state.settings.endpoint == settings.endpoint { return (false, false) }
            let first = state.generation < 0
            state.settings = settings
            state.generation = max(1, state.generation + 1)
            return (true, first)
        }
        if moved && !first, let callback = onMove.withLock({ $0 }) { callback(describeMaster()) }
        return moved
    }

    /// Follows `+switch-master` on one sentinel at a time (the next when it goes away, asking for the master again
    /// then, since a switch may have been missed). `onSwitch` gets the new master's address whenever the master
    /// moves, however that was found.
    public func startMonitoring(onSwitch: @escaping @Sendable (String) -> Void) {
        guard let sentinel else { return }
        onMove.withLock { $0 = onSwitch }
        let flag = RunningFlag()
        monitor.withLock { $0 = flag }
        let thread = Thread { [self] in
            var index = 0
            var first = true
            while flag.isRunning {
                let address = sentinel.sentinels[index % sentinel.sentinels.count]
                index += 1
                guard let connection = try? RedisConnection(settings(forSentinel: address)),
                    (try? connection.sendCommand(["SUBSCRIBE", "+switch-master"])) != nil
                else {
                    flag.rest(0.2)
                    continue
                }
                if !first { _ = try? refresh() }
                first = false
                while flag.isRunning {
                    guard connection.waitReadable(timeout: 0.25) else {
                        if connection.broken { break }
                        continue
                    }
                    guard let message = try? connection.readReply(deadline: .infinity) else { break }
                    // ["message", "+switch-master", "<name> <old-ip> <old-port> <new-ip> <new-port>"]
                    guard case .array(let parts?) = message, parts.count == 3, parts[0].text == "message",
                        let text = parts[2].text
                    else { continue }
                    let fields = text.split(separator: " ")
                    guard fields.count == 5, String(fields[0]) == sentinel.masterName, let port = Int(fields[4]) else {
                        continue
                    }
                    _ = moveTo(dataSettings(host: String(fields[3]), port: port))
                }
                connection.close()
            }
        }
        thread.name = "secretsfs-redis-sentinel"
        thread.start()
    }

    /// The replicas the sentinels list for the master, healthy ones only (`SENTINEL REPLICAS`: flags without
    /// `s_down`, `o_down` or `disconnected`), from the first sentinel that answers; when none is healthy or no
    /// sentinel answers, the ones listed healthy last time. Empty outside Sentinel mode.
    public func replicaSettings() -> [RedisSettings] {
        guard let sentinel else { return [] }
        for address in sentinel.sentinels {
            guard let connection = try? RedisConnection(settings(forSentinel: address)) else { continue }
            defer { connection.close() }
            guard case .array(let replicas?)? = try? connection.command("SENTINEL", "REPLICAS", sentinel.masterName)
            else { continue }
            let healthy = replicas.compactMap { replica -> RedisSettings? in
                guard case .array(let flat?) = replica else { return nil }
                var fields: [String: String] = [:]
                var index = 0
                while index + 1 < flat.count {
                    if let key = flat[index].text, let value = flat[index + 1].text { fields[key] = value }
                    index += 2
                }
                let flags = fields["flags"] ?? ""
                guard let host = fields["ip"], let port = fields["port"].flatMap({ Int($0) }),
                    !flags.contains("s_down"), !flags.contains("o_down"), !flags.contains("disconnected")
                else { return nil }
                return dataSettings(host: host, port: port)
            }
            if healthy.isEmpty { return lastReplicas.withLock { $0 } }
            lastReplicas.withLock { $0 = healthy }
            return healthy
        }
        return lastReplicas.withLock { $0 }
    }

    /// host:port of the current master.
    public func describeMaster() -> String {
        if case .tcp(let host, let port) = settings.endpoint.address { return "\(host):\(port)" }
        return "\(settings.endpoint)"
    }

    public func stop() {
        monitor.withLock { $0?.stop() }
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// A background loop's "keep going" flag.
final class RunningFlag: Sendable {
    private let running = Locked(true)
    var isRunning: Bool { running.withLock { $0 } }
    func stop() { running.withLock { $0 = false } }

    /// Sleeps up to `seconds`, waking early when stopped.
    func rest(_ seconds: Double) {
        let end = RedisTarget.now() + seconds
        while isRunning && RedisTarget.now() < end { usleep(20_000) }
    }
}
