import Locking

/// Which envs each top had when it was last listed (at start, on readdir, on an env lookup that had to ask).
///
/// An env directory lookup uses it while it is younger than the cache ttl, so a path walk to a key waits on its
/// backend once (for the key), not twice, and a walk to a known env needs no backend at all. Any change notice
/// drops it; an env not in it is always asked for (it may be new).
public final class EnvListingCache: Sendable {
    struct Entry {
        var envs: Set<String>
        var at: Double
        /// From the previous worker's snapshot: only a fallback while the store fails.
        var inherited = false
    }

    let entries = Locked<[String: Entry]>([:])
    let maxAge: Double
    let changed = Locked<(@Sendable () -> Void)?>(nil)

    public init(maxAge: Double) {
        self.maxAge = maxAge
    }

    /// Whether `env` (lower-case) was in the top's listing, when that listing is young enough.
    public func knows(_ env: String, top: String, now: Double) -> Bool {
        entries.withLock { entries in
            guard let entry = entries[top], !entry.inherited, now - entry.at < maxAge else { return false }
            return entry.envs.contains(env)
        }
    }

    public func store(_ envs: [String], top: String, at now: Double) {
        entries.withLock { $0[top] = Entry(envs: Set(envs), at: now) }
        changed.withLock { $0 }?()
    }

    public func onChange(_ callback: (@Sendable () -> Void)?) { changed.withLock { $0 = callback } }

    /// Forgets every listing this worker made (a store changed: envs may have come or gone); inherited ones stay
    /// as fallbacks.
    public func clear() {
        entries.withLock { $0 = $0.filter { $0.value.inherited } }
    }

    /// The last listing of `top` while its store fails: any not older than `within` (ttl + stale_if_error).
    public func fallback(top: String, now: Double, within: Double) -> [String]? {
        entries.withLock { entries in
            guard let entry = entries[top], now - entry.at < within else { return nil }
            return entry.envs.sorted()
        }
    }

    public func exported() -> [(top: String, at: Double, envs: [String])] {
        entries.withLock { entries in entries.map { ($0.key, $0.value.at, $0.value.envs.sorted()) } }
    }

    public func inherit(_ listings: [(top: String, at: Double, envs: [String])]) {
        entries.withLock { entries in
            for (top, at, envs) in listings where entries[top] == nil {
                entries[top] = Entry(envs: Set(envs), at: at, inherited: true)
            }
        }
    }
}
