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
    }

    let entries = Locked<[String: Entry]>([:])
    let maxAge: Double

    public init(maxAge: Double) {
        self.maxAge = maxAge
    }

    /// Whether `env` (lower-case) was in the top's listing, when that listing is young enough.
    public func knows(_ env: String, top: String, now: Double) -> Bool {
        entries.withLock { entries in
            guard let entry = entries[top], now - entry.at < maxAge else { return false }
            return entry.envs.contains(env)
        }
    }

    public func store(_ envs: [String], top: String, at now: Double) {
        entries.withLock { $0[top] = Entry(envs: Set(envs), at: now) }
    }

    /// Forgets every listing (a store changed: envs may have come or gone).
    public func clear() {
        entries.withLock { $0 = [:] }
    }
}
