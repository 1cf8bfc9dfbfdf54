import Deadline
import Dispatch
import Foundation
import Locking
import Logging
import Metrics
import SecretsCore

/// `type = "vault-database"` and `type = "vault-pki"`: leased secrets as files. Each role is a directory
/// (`/secrets/db/<role>/username`, `/password`; `/secrets/certs/<role>/certificate`, `private_key`, ...) whose files
/// all come from one lease: the role's current lease is its env view, so one open never mixes two leases, and a new
/// lease replaces the whole directory at once (a change notice, new inodes).
///
/// Lifecycle: minted on the first read of the role; a renewable lease is renewed at `renew_at` (2/3) of its
/// duration; when a renewal fails or is cut short (`max_ttl`), or a certificate nears its end, the next lease is
/// minted `rotate_before` (10% of the lease) before the old one expires, so readers never see an expired credential.
/// The old lease is left to expire (clients still connected with it keep working); `close` (unmount, stop) revokes
/// every lease this store holds. A worker crash, a reload or a takeover keeps the leases: the next worker adopts
/// them from the sealed snapshot (`LeaseCarrying`) and renews them on, instead of minting new ones.
public final class LeasedStore: SecretStore, LeaseReporting, LeaseCarrying {
    public enum Kind: String, Sendable { case database = "vault-database", pki = "vault-pki" }

    /// A PKI role's request: `[stores.<name>.roles.<role>]`.
    public struct CertificateRequest: Sendable, Equatable {
        public var commonName: String
        public var altNames: [String]
        public var ttl: String?
    }

    struct Lease: Sendable {
        var id: String?
        var fields: [String: SecretValue]
        var renewable: Bool
        /// The lease's own duration, as first granted (seconds).
        var duration: Double
        /// Monotonic times: when it next renews, and when it expires.
        var renewAt: Double
        var expires: Double
        /// When a view of the role was last fetched for a reader (monotonic), for `idle_revoke`.
        var lastRead: Double = CoreClock.monotonic()
        /// Failed attempts at minting its successor, and when to try again.
        var failures = 0
        var retryAt: Double = 0
    }

    public let name: String
    public let kind: Kind
    public let settings: VaultSettings
    let http: HTTPClient
    let tokens: TokenManager
    let logger: Logger
    /// Database roles, or PKI roles with their requests.
    let roles: [String: CertificateRequest?]
    let renewFraction: Double
    let rotateFraction: Double
    /// `idle_revoke`: a lease no reader has asked for this long is revoked (nil: never).
    let idleRevoke: Double?
    /// `lease_per`: a lease per systemd unit or Kubernetes pod that reads a role (nil: one for all).
    public let leasePer: LeasePer?
    let leases = Locked<[String: Lease]>([:])
    /// One mint at a time per role (a second reader waits for the first's lease).
    let minting = Locked<Set<String>>([])
    let watcher = Locked<(@Sendable ([StoreChange]) -> Void)?>(nil)
    let leasesChanged = Locked<(@Sendable () -> Void)?>(nil)
    let running = Locked(false)
    let stopped = Locked(false)
    let closing = Locked(())

    public init(
        config: StoreConfig, logger: Logger, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(LocatedError) {
        guard let kind = Kind(rawValue: config.type) else {
            throw config.section.error("type", "store '\(config.name)': not a leased store type")
        }
        name = config.name
        self.kind = kind
        self.logger = logger
        let section = config.section
        var settings = try VaultSettings(
            config: config, environment: environment, extra: ["roles", "renew_at", "rotate_before", "idle_revoke", "lease_per"])
        // The engines' usual mount points.
        if section.values["mount"] == nil { settings.mount = kind == .database ? "database" : "pki" }
        self.settings = settings
        renewFraction = try Self.fraction(section, "renew_at", default: 2.0 / 3.0)
        rotateFraction = try Self.fraction(section, "rotate_before", default: 0.1)
        if let raw = try section.string("lease_per") {
            guard let per = LeasePer(rawValue: raw) else {
                throw section.error("lease_per", "lease_per must be \"unit\" or \"pod\", not \"\(raw)\"")
            }
            leasePer = per
        } else {
            leasePer = nil
        }
        idleRevoke = try section.duration("idle_revoke")
        if let idleRevoke, idleRevoke < 1 {
            throw section.error("idle_revoke", "idle_revoke must be at least 1s (or left out: never)")
        }
        var roles: [String: CertificateRequest?] = [:]
        switch kind {
        case .database:
            guard let listed = try section.stringArray("roles"), !listed.isEmpty else {
                throw section.error(nil, "store '\(config.name)' needs roles = [\"<role>\", ...]: the database engine's roles to serve")
            }
            for role in listed {
                guard EntryName.problem(role) == nil, role == role.lowercased() else {
                    throw section.error("roles", "'\(role)' cannot be a directory name here (lower-case letters, digits, -, _)")
                }
                roles[role] = .some(nil)
            }
        case .pki:
            let table = try section.section("roles", required: true)
            guard !table.keys.isEmpty else {
                throw section.error(nil, "store '\(config.name)' needs [stores.\(config.name).roles.<role>] with common_name")
            }
            for role in table.keys {
                let entry = try table.section(role, required: true)
                try entry.rejectUnknown(allowed: ["common_name", "alt_names", "ttl"])
                guard EntryName.problem(role) == nil, role == role.lowercased() else {
                    throw table.error(role, "'\(role)' cannot be a directory name here (lower-case letters, digits, -, _)")
                }
                guard let commonName = try entry.string("common_name") else {
                    throw entry.error(nil, "role '\(role)' needs common_name")
                }
                roles[role] = CertificateRequest(
                    commonName: commonName, altNames: try entry.stringArray("alt_names") ?? [], ttl: try entry.string("ttl"))
            }
        }
        self.roles = roles
        http = HTTPClient(
            settings: .init(timeout: settings.timeout, caFile: settings.caCert, skipVerify: settings.skipVerify, addresses: settings.addresses)
        ) { [logger, name] from, to, why in
            logger.warning("Vault requests moved to another node", metadata: ["store": "\(name)", "from": "\(from)", "to": "\(to)", "why": "\(why)"])
        }
        tokens = TokenManager(settings: settings, http: http, store: config.name, logger: logger, environment: environment)
    }

    static func fraction(_ section: ConfigSection, _ key: String, default value: Double) throws(LocatedError) -> Double {
        guard let raw = section.values[key] else { return value }
        let number: Double
        switch raw {
        case .float(let given): number = given
        case .int(let given): number = Double(given)
        default: throw section.error(key, "\(key) must be a number between 0 and 1 (a fraction of the lease)")
        }
        guard number > 0, number < 1 else { throw section.error(key, "\(key) must be between 0 and 1, not \(number)") }
        return number
    }

    public var operationTimeout: Double? { settings.timeout }

    /// Until the role's lease expires; 0 when none is held (expired and not replaced, revoked as idle): a cached
    /// view of it is then never served, and a read asks for a new lease.
    public func valueLifetime(env: String) -> Double? {
        let expires = leases.withLock { $0[env]?.expires }
        return expires.map { max(0, $0 - CoreClock.monotonic()) } ?? 0
    }

    /// With `idle_revoke`, views of a role stay cached half of it at most: every reader reaches the store that often,
    /// so a lease nobody asks for is one nobody reads.
    public var cacheBound: Double? { idleRevoke.map { $0 / 2 } }

    // MARK: SecretStore

    public func envs(at location: String?) throws(SecretsError) -> [String] { roles.keys.sorted() }

    /// `env` is a role, or with `lease_per` a role and the reading unit's or pod's cgroup
    /// (`app#/system.slice/a.service`): each such env has a lease of its own.
    public func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        guard roles[LeasePer.baseEnv(env)] != nil, leasePer != nil || LeasePer.identity(in: env) == nil else {
            return nil
        }
        return try lease(for: env).fields
    }

    public func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool {
        watcher.withLock { $0 = onChange }
        return true
    }

    /// Stops renewing and revokes every lease this store holds (certificates have none to revoke). A second call
    /// (the worker's SIGTERM while its serve loop also closes) waits until the first has revoked.
    public func close() {
        closing.withLock { _ in revokeAll() }
    }

    private func revokeAll() {
        stopped.withLock { $0 = true }
        watcher.withLock { $0 = nil }
        let held = leases.withLock { leases -> [(String, Lease)] in
            defer { leases = [:] }
            return Array(leases)
        }
        for (role, lease) in held {
            guard let id = lease.id, !id.isEmpty else { continue }
            do {
                try revoke(id)
                logger.info("lease revoked", metadata: ["store": "\(name)", "role": "\(role)"])
                count("revoked", role: role)
            } catch {
                logger.warning("revoking a lease failed; it expires on its own", metadata: ["store": "\(name)", "role": "\(role)", "error": "\(error)"])
            }
        }
    }

    // MARK: Leases carried to the next worker

    public func carriedLeases() -> [CarriedLease] {
        leases.withLock { $0 }.map { role, lease in
            CarriedLease(
                store: name, role: role, id: lease.id, fields: lease.fields, renewable: lease.renewable,
                duration: lease.duration, renewAt: lease.renewAt, expires: lease.expires)
        }
    }

    /// The previous worker's leases of this store's roles that have more than a second left (one that is due to
    /// rotate rotates at once).
    public func adopt(_ carried: [CarriedLease]) {
        let now = CoreClock.monotonic()
        var adopted: [(String, Double)] = []
        leases.withLock { leases in
            for lease in carried where lease.store == name && roles[lease.role] != nil && lease.expires - now > 1 {
                guard leases[lease.role] == nil else { continue }
                leases[lease.role] = Lease(
                    id: lease.id, fields: lease.fields, renewable: lease.renewable, duration: lease.duration,
                    renewAt: lease.renewAt, expires: lease.expires)
                adopted.append((lease.role, lease.expires - now))
            }
        }
        for (role, left) in adopted {
            logger.info(
                "kept the previous worker's lease",
                metadata: ["store": "\(name)", "role": "\(role)", "seconds": "\(Int(left))"])
            count("adopted", role: role)
        }
        if !adopted.isEmpty { startLifecycle() }
    }

    public func onLeasesChange(_ callback: (@Sendable () -> Void)?) { leasesChanged.withLock { $0 = callback } }

    func leasesDidChange() { leasesChanged.withLock { $0 }?() }

    // MARK: Leases

    public func leaseSummaries() -> [LeaseSummary] {
        let now = CoreClock.monotonic()
        return leases.withLock { $0 }.sorted { $0.key < $1.key }.map { key, lease in
            let role = LeasePer.identity(in: key).map { LeasePer.baseEnv(key) + " for " + $0 } ?? key
            return LeaseSummary(
                store: name, role: role, secondsLeft: max(0, Int(lease.expires - now)), renewable: lease.renewable)
        }
    }

    /// The role's current lease: minted on first use (one mint at a time per role).
    func lease(for role: String) throws(SecretsError) -> Lease {
        while true {
            let now = CoreClock.monotonic()
            let held = leases.withLock { leases -> Lease? in
                leases[role]?.lastRead = now
                return leases[role]
            }
            if let held { return held }
            let mine = minting.withLock { $0.insert(role).inserted }
            guard mine else {
                usleep(5_000)
                continue
            }
            defer { _ = minting.withLock { $0.remove(role) } }
            if let current = leases.withLock({ $0[role] }) { return current }
            let lease = try mint(role)
            leases.withLock { $0[role] = lease }
            startLifecycle()
            leasesDidChange()
            return lease
        }
    }

    func send(_ method: String, _ path: String, body: [UInt8]? = nil) throws(SecretsError) -> HTTPResponse {
        var headers = ["X-Vault-Token": try tokens.token()]
        if let namespace = settings.namespace { headers["X-Vault-Namespace"] = namespace }
        var response = try http.request(method, path, headers: headers, body: body)
        if response.status == 403 {
            try tokens.relogin()
            headers["X-Vault-Token"] = try tokens.token()
            response = try http.request(method, path, headers: headers, body: body)
        }
        switch response.status {
        case 200...299: return response
        case 403: throw SecretsError(.permissionDenied, "store '\(name)': \(method) \(HTTPClient.redacted(path)): 403 permission denied")
        // Not ENOENT: the role is configured, so its directory exists; what fails is getting its lease.
        case 404: throw SecretsError(.io, "store '\(name)': \(method) \(HTTPClient.redacted(path)): no such role or engine (404)")
        default: throw SecretsError(.storeUnavailable, "store '\(name)': \(method) \(HTTPClient.redacted(path)): HTTP \(response.status)")
        }
    }

    /// A new lease for the role: database `GET <mount>/creds/<role>`, PKI `POST <mount>/issue/<role>`.
    func mint(_ key: String) throws(SecretsError) -> Lease {
        let role = LeasePer.baseEnv(key)
        let mount = VaultStore.escape(settings.mount)
        let response: HTTPResponse
        switch kind {
        case .database:
            response = try send("GET", "/v1/\(mount)/creds/\(VaultStore.escape(role))")
        case .pki:
            guard let request = roles[role] ?? nil else { throw SecretsError(.notFound, "no PKI role '\(role)'") }
            var body: [String: SecretValue] = ["common_name": .string(request.commonName)]
            if !request.altNames.isEmpty { body["alt_names"] = .string(request.altNames.joined(separator: ",")) }
            if let ttl = request.ttl { body["ttl"] = .string(ttl) }
            var text: [UInt8] = []
            SecretValue.table(body).appendJSON(to: &text)
            response = try send("POST", "/v1/\(mount)/issue/\(VaultStore.escape(role))", body: text)
        }
        guard case .table(let root)? = SecretValue.parseJSON(response.body), case .table(var data)? = root["data"] else {
            throw SecretsError(.invalidData, "store '\(name)': the answer for role '\(role)' has no data")
        }
        let now = CoreClock.monotonic()
        var duration = Self.number(root["lease_duration"]) ?? 0
        let renewable = root["renewable"] == .bool(true)
        if kind == .pki {
            // The certificate's own end: `expiration` (Unix seconds).
            if let expiration = Self.number(data["expiration"]) {
                let wall = CoreClock.wall()
                duration = max(1, expiration - (Double(wall.seconds) + Double(wall.nanoseconds) / 1e9))
            }
            if case .array(let chain)? = data["ca_chain"] {
                let pems = chain.compactMap { item -> String? in if case .string(let text) = item { return text } else { return nil } }
                data["ca_chain"] = .string(pems.joined(separator: "\n") + (pems.isEmpty ? "" : "\n"))
            }
        }
        guard duration > 0 else { throw SecretsError(.invalidData, "store '\(name)': the lease for role '\(role)' has no duration") }
        var id: String?
        if case .string(let text)? = root["lease_id"], !text.isEmpty { id = text }
        logger.info(
            "new lease",
            metadata: [
                "store": "\(name)", "role": "\(role)", "for": "\(LeasePer.identity(in: key) ?? "all")",
                "seconds": "\(Int(duration))", "renewable": "\(renewable)",
            ])
        count("minted", role: role)
        if kind == .pki, let expiration = Self.number(data["expiration"]) {
            Gauge(label: "secretsfs_certificate_not_after", dimensions: [("store", name), ("role", role)]).record(expiration)
        }
        return Lease(
            id: id, fields: data, renewable: renewable && id != nil, duration: duration,
            renewAt: now + duration * renewFraction, expires: now + duration)
    }

    /// `secretsfs_lease_events_total{store,role,event}`: minted, renewed, rotated, revoked, failed.
    func count(_ event: String, role: String) {
        Counter(
            label: "secretsfs_lease_events_total",
            dimensions: [("store", name), ("role", LeasePer.baseEnv(role)), ("event", event)]
        ).increment()
    }

    static func number(_ value: SecretValue?) -> Double? {
        switch value {
        case .int(let number)?: return Double(number)
        case .float(let number)?: return number
        default: return nil
        }
    }

    func revoke(_ id: String) throws(SecretsError) {
        var body: [UInt8] = []
        SecretValue.table(["lease_id": .string(id)]).appendJSON(to: &body)
        _ = try send("PUT", "/v1/sys/leases/revoke", body: body)
    }

    /// Renews the lease; the new expiry (nil: the renewal failed).
    func renew(_ lease: Lease) -> Double? {
        guard let id = lease.id else { return nil }
        var body: [UInt8] = []
        SecretValue.table(["lease_id": .string(id), "increment": .int(Int64(lease.duration))]).appendJSON(to: &body)
        do {
            let response = try send("PUT", "/v1/sys/leases/renew", body: body)
            guard case .table(let root)? = SecretValue.parseJSON(response.body), let granted = Self.number(root["lease_duration"]),
                granted > 0
            else { return nil }
            return CoreClock.monotonic() + granted
        } catch {
            logger.warning("renewing a lease failed; the next one is minted before it expires", metadata: ["store": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// One thread for the store's leases: renew when due, rotate before the end.
    func startLifecycle() {
        guard running.withLock({ running in
            defer { running = true }
            return !running
        }) else { return }
        DispatchQueue(label: "secretsfs.leases.\(name)").async { [weak self] in
            while let store = self, !store.stopped.withLock({ $0 }) {
                store.tend()
                usleep(100_000)
            }
        }
    }

    /// Revokes the leases no reader asked for within `idle_revoke` (the next read mints a new one).
    func revokeIdle(now: Double) {
        guard let idleRevoke else { return }
        revokeDropped(
            where: { _, lease in now - lease.lastRead >= idleRevoke },
            "revoked a lease nobody read for idle_revoke", ["idle_revoke": "\(Int(idleRevoke))s"])
    }

    /// With `lease_per`: revokes the leases of units and pods whose cgroup is gone.
    func revokeGone() {
        guard leasePer != nil else { return }
        revokeDropped(
            where: { key, _ in LeasePer.identity(in: key).map(Self.cgroupIsGone) ?? false },
            "revoked the lease of a unit or pod that is gone", [:])
    }

    /// Drops the leases `condition` picks (a next read mints anew), then revokes them, logging `message` for each.
    private func revokeDropped(
        where condition: (String, Lease) -> Bool, _ message: Logger.Message, _ extra: Logger.Metadata
    ) {
        let dropped = leases.withLock { leases -> [(String, Lease)] in
            let found = leases.filter { condition($0.key, $0.value) }
            for key in found.keys { leases.removeValue(forKey: key) }
            return Array(found)
        }
        guard !dropped.isEmpty else { return }
        leasesDidChange()
        for (key, lease) in dropped {
            if let id = lease.id {
                do {
                    try revoke(id)
                } catch {
                    logger.warning(
                        "revoking a lease failed; it expires on its own",
                        metadata: ["store": "\(name)", "role": "\(LeasePer.baseEnv(key))", "error": "\(error)"])
                }
            }
            var metadata: Logger.Metadata = ["store": "\(name)", "role": "\(LeasePer.baseEnv(key))"]
            if let identity = LeasePer.identity(in: key) { metadata["for"] = "\(identity)" }
            logger.info(message, metadata: metadata.merging(extra) { _, new in new })
            count("revoked", role: key)
        }
    }

    /// Whether no cgroup hierarchy has `path` any more (unified, v2 at the root, or systemd's v1 one).
    static func cgroupIsGone(_ path: String) -> Bool {
        let bases = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"]
        return !bases.contains { access($0 + path, F_OK) == 0 }
    }

    /// Renews and rotates what is due now.
    func tend() {
        let now = CoreClock.monotonic()
        revokeIdle(now: now)
        revokeGone()
        for (role, lease) in leases.withLock({ $0 }) {
            Gauge(label: "secretsfs_lease_expiry_seconds", dimensions: [("store", name), ("role", role)])
                .record(max(0, lease.expires - now))
            let rotateAt = lease.expires - lease.duration * rotateFraction
            if now >= lease.expires {
                // Never served past its end: the next read asks for a new lease (EIO while none can be had).
                _ = leases.withLock { $0.removeValue(forKey: role) }
                logger.warning(
                    "a lease expired before it could be replaced", metadata: ["store": "\(name)", "role": "\(role)"])
                leasesDidChange()
                continue
            }
            if now >= rotateAt {
                guard now >= lease.retryAt else { continue }
                do {
                    var next = try mint(role)
                    // A rotation is not a read.
                    next.lastRead = lease.lastRead
                    leases.withLock { $0[role] = next }
                    logger.info("rotated to a new lease before the old one expires", metadata: ["store": "\(name)", "role": "\(role)"])
                    count("rotated", role: role)
                    leasesDidChange()
                    if let notify = watcher.withLock({ $0 }) { notify([.at(location: nil, env: role)]) }
                } catch {
                    // Logged once when it starts failing; retried with a growing pause (0.5 s doubling to 30 s),
                    // and once more shortly before the end.
                    if lease.failures == 0 {
                        logger.warning(
                            "minting the next lease failed; the current one serves until it expires",
                            metadata: ["store": "\(name)", "role": "\(role)", "error": "\(error)"])
                    }
                    count("failed", role: role)
                    var updated = lease
                    updated.failures += 1
                    let pause = min(30, 0.5 * Double(1 << min(updated.failures - 1, 6)))
                    let lastChance = lease.expires - 1
                    updated.retryAt = now + pause < lastChance || now >= lastChance ? now + pause : lastChance
                    leases.withLock { leases in if leases[role] != nil { leases[role] = updated } }
                }
                continue
            }
            guard lease.renewable, now >= lease.renewAt else { continue }
            var updated = lease
            if let expires = renew(lease) {
                updated.expires = expires
                updated.renewAt = now + (expires - now) * renewFraction
                logger.info("lease renewed", metadata: ["store": "\(name)", "role": "\(role)", "seconds": "\(Int(expires - now))"])
                count("renewed", role: role)
            } else {
                // No more renewals: rotate when due.
                updated.renewable = false
                count("failed", role: role)
            }
            leases.withLock { $0[role] = updated }
            leasesDidChange()
        }
    }
}
