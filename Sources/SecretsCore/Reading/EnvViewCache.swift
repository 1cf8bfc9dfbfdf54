import Locking

/// One env of one top, the unit the cache keeps.
public struct EnvKey: Hashable, Sendable {
    public var top: String
    public var env: String

    public init(top: String, env: String) {
        self.top = top
        self.env = env
    }
}

/// The cached env views: each env's listing and values fetched together and expiring together, after `ttl`.
/// When the store fails, an expired view is served for up to `stale_if_error` more (with a short timeout, so names
/// are asked again soon); once a call has failed, without waiting on the store again (a background refresh asks).
public final class EnvViewCache: Sendable {
    /// A view, how long the kernel may keep its names, and whether it is served past its ttl.
    public struct Answer: Sendable {
        public var view: EnvView
        public var remaining: Double
        public var stale: Bool
    }

    struct Entry {
        var view: EnvView
        var fetchedAt: Double
        /// From the previous worker's snapshot: served only as a stale value while the store fails, never as fresh
        /// (changes made while no worker watched would be missed).
        var inherited = false
    }

    let entries = Locked<[EnvKey: Entry]>([:])
    /// Called after a fetched view is kept (the worker writes its snapshot for the next worker).
    let changed = Locked<(@Sendable () -> Void)?>(nil)
    let resolver: Resolver
    let health: StoreHealthBoard
    let ttl: Double
    let staleIfError: Double

    public init(resolver: Resolver, health: StoreHealthBoard, ttl: Double, staleIfError: Double) {
        self.resolver = resolver
        self.health = health
        self.ttl = ttl
        self.staleIfError = staleIfError
    }

    /// The cached view while its ttl runs, else one fetched now; a stale one while the store fails, within bounds.
    public func view(_ key: EnvKey, now: Double) throws(SecretsError) -> Answer {
        let cached = entries.withLock { $0[key] }
        // A store may bound how long its views stay (a leased store that revokes idle leases).
        let ttl = resolver.cacheBound(top: key.top).map { min($0, self.ttl) } ?? self.ttl
        // And how long what it holds may be served at all (a lease's expiry): never past it, stale or not.
        let lifetime = resolver.valueLifetime(top: key.top, env: key.env) ?? .infinity
        if let cached, !cached.inherited, now - cached.fetchedAt < ttl, lifetime > 0 {
            return Answer(view: cached.view, remaining: min(ttl - (now - cached.fetchedAt), lifetime), stale: false)
        }
        // The store failed last time it was asked: what is cached is served now, and one refresh in the background
        // asks again (the kernel asks for a stale name again after 1 s, so a store that answers again is seen soon).
        if let cached, now - cached.fetchedAt < ttl + staleIfError, lifetime > 0, health.isFailing(key.top) {
            health.warn(top: key.top, kind: "stale", "'\(key.top)' is failing, serving cached values for up to stale_if_error")
            health.refreshInBackground("view \(key.top)/\(key.env)") { [self] in
                if let view = try? fetch(key) { store(view, for: key, at: health.clock()) }
            }
            return Answer(view: cached.view, remaining: min(1, ttl, lifetime), stale: true)
        }
        do {
            let view = try fetch(key)
            store(view, for: key, at: now)
            let left = resolver.valueLifetime(top: key.top, env: key.env) ?? .infinity
            return Answer(view: view, remaining: min(ttl, left), stale: false)
        } catch {
            if error.code != .notFound, let cached, now - cached.fetchedAt < ttl + staleIfError, lifetime > 0 {
                health.warn(top: key.top, kind: "stale", "'\(key.top)' failed, serving cached values for up to stale_if_error: \(error)")
                return Answer(view: cached.view, remaining: min(1, ttl, lifetime), stale: true)
            }
            health.warn(top: key.top, "reading '\(key.top)/\(key.env)' failed: \(error)")
            throw error
        }
    }

    /// A view fetched now, not cached (through the health board).
    public func fetch(_ key: EnvKey) throws(SecretsError) -> EnvView {
        try health.call(key.top, within: resolver.operationTimeout(top: key.top)) { () throws(SecretsError) in try resolver.view(top: key.top, env: key.env) }
    }

    public func store(_ view: EnvView, for key: EnvKey, at now: Double) {
        entries.withLock { $0[key] = Entry(view: view, fetchedAt: now) }
        changed.withLock { $0 }?()
    }

    /// The view held for `key`, whatever its age (nil: none).
    public func held(_ key: EnvKey) -> EnvView? { entries.withLock { $0[key]?.view } }

    /// Every view held, with when it was fetched (for the next worker's snapshot).
    public func exported() -> [(key: EnvKey, fetchedAt: Double, view: EnvView)] {
        entries.withLock { entries in entries.map { ($0.key, $0.value.fetchedAt, $0.value.view) } }
    }

    /// Takes the previous worker's views as stale-only entries (never over a view this worker fetched).
    public func inherit(_ views: [(key: EnvKey, fetchedAt: Double, view: EnvView)]) {
        entries.withLock { entries in
            for (key, fetchedAt, view) in views where entries[key] == nil {
                entries[key] = Entry(view: view, fetchedAt: fetchedAt, inherited: true)
            }
        }
    }

    public func onChange(_ callback: (@Sendable () -> Void)?) { changed.withLock { $0 = callback } }

    /// The envs held now.
    public var keys: Set<EnvKey> { entries.withLock { Set($0.keys) } }

    public var count: Int { entries.withLock { $0.count } }
}
