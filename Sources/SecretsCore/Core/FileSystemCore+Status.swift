import Metrics

/// Health, status and provenance: what /status, /healthz, /metrics and the `user.secretsfs.source` xattr show.
extension FileSystemCore {
    /// `sourceAttribute` of a file (nil for directories and unknown inodes).
    public func source(of inode: UInt64) throws(SecretsError) -> String? {
        guard let node = inodes.read({ $0.files[inode] }) else { return nil }
        let sources = try health.call(node.path.top, within: resolver.operationTimeout(top: node.path.top)) { () throws(SecretsError) in
            try resolver.sources(top: node.path.top, env: node.path.env, key: node.path.key)
        }
        guard let served = sources.first else { throw SecretsError(.notFound, "no level holds the key now") }
        var text = "level=\(served.level) store=\(served.store) env=\(served.layer)"
        if sources.count > 1 { text += " shadowed=" + sources.dropFirst().map(\.level).joined(separator: ",") }
        return text
    }

    /// `versionAttribute` of a file: 16 hex digits that change with its value and tell nothing about it (the start
    /// of the node's keyed digest, whose key only the mount holds; the same across workers). Nil for directories and
    /// unknown inodes. A changed value is a new node, with its own mtime and ctime: the time it was first served.
    public func version(of inode: UInt64) -> String? {
        guard let node = inodes.read({ $0.files[inode] }) else { return nil }
        return node.digest.prefix(8).map { byte in
            let text = String(byte, radix: 16)
            return byte < 16 ? "0" + text : text
        }.joined()
    }

    /// Asks the top's stores for their envs once, so health is known before the first read.
    /// The listing is kept for env lookups (`EnvListingCache`).
    public func probe(_ top: String) throws(SecretsError) -> [String] {
        let envs = try health.call(top, within: resolver.operationTimeout(top: top)) { () throws(SecretsError) in
            try resolver.envs(top: top)
        }
        listings.store(envs, top: top, at: clock())
        return envs
    }

    /// How many workers died and were replaced on this mount before this one (from the supervisor).
    public func setWorkerRestarts(_ count: UInt64) { workerRestarts.withLock { $0 = count } }

    /// Every top's health, counts for /status and gauges for /metrics.
    public func status() -> CoreStatus {
        let health = self.health.snapshot
        let liveInodes = inodes.read { $0.files.count }
        let cachedEnvs = reader.views.count
        let (notices, lastNotice) = changes.stats.withLock { ($0.notices, $0.lastNotice) }
        let restarts = workerRestarts.withLock { $0 }
        Gauge(label: "secretsfs_live_inodes").record(liveInodes)
        Gauge(label: "secretsfs_cached_envs").record(cachedEnvs)
        Gauge(label: "secretsfs_worker_restarts").record(Int64(restarts))
        return CoreStatus(
            stores: resolver.topNames.map { name in
                (name, health[name] ?? StoreHealth(ok: true, since: mountedAt, error: nil))
            }, liveInodes: liveInodes, cachedEnvs: cachedEnvs, notices: notices, lastNotice: lastNotice,
            workerRestarts: restarts, leases: leaseSummaries())
    }

    /// Every leased store's leases, each store once (a store may serve several tops).
    func leaseSummaries() -> [LeaseSummary] {
        var seen: Set<String> = []
        var out: [LeaseSummary] = []
        for top in resolver.tops.values.sorted(by: { $0.name < $1.name }) {
            for level in top.chain where seen.insert(level.store.name).inserted {
                if let leased = level.store as? any LeaseReporting { out += leased.leaseSummaries() }
            }
        }
        return out
    }
}

/// Last-known-good across workers: what this worker cached, for the next one, and what the previous one cached.
extension FileSystemCore {
    public struct CachedState: Sendable {
        public var views: [(key: EnvKey, fetchedAt: Double, view: EnvView)]
        public var listings: [(top: String, at: Double, envs: [String])]
        /// The leased stores' leases (only in the worker-to-worker snapshot, never on disk).
        public var leases: [CarriedLease]

        public init(
            views: [(key: EnvKey, fetchedAt: Double, view: EnvView)], listings: [(top: String, at: Double, envs: [String])],
            leases: [CarriedLease] = []
        ) {
            self.views = views
            self.listings = listings
            self.leases = leases
        }
    }

    /// Every cached env view and listing (times on CLOCK_MONOTONIC, shared by the processes of one boot).
    public func cachedState() -> CachedState {
        CachedState(views: reader.views.exported(), listings: listings.exported())
    }

    /// Takes the previous worker's views and listings as fallbacks while their stores fail (within stale_if_error).
    public func inherit(_ state: CachedState) {
        reader.views.inherit(state.views)
        listings.inherit(state.listings)
    }

    /// `callback` runs after each fetched view or listing is kept.
    public func onCacheChange(_ callback: (@Sendable () -> Void)?) {
        reader.views.onChange(callback)
        listings.onChange(callback)
    }
}
