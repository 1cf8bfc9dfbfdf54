/// What a store's change notice says changed, as precisely as the store can tell.
public enum StoreChange: Sendable, Hashable {
    /// Anything may have changed (a reconnect after which events may have been missed).
    case all
    /// Something at `location` (nil: the store's own) changed; in env `env`, or in any env there when nil.
    case at(location: String?, env: String?)
}

/// A backend that holds secrets in Dynaconf's layout: envs, each a flat set of keys.
///
/// A store answers raw data only; layering (default, env, global) and scope chains live in the `Resolver`, caching
/// in `FileSystemCore`. Every store must pass the shared conformance suite (Tests/StoreConformance/StoreConformance.swift).
///
/// `location` is where inside the backend to look; nil means the store's configured location. A scope chain element
/// `{ store = "x", path = "..." }` passes its path here (the file store: a file; Vault: a KV path; Redis: a prefix).
public protocol SecretStore: AnyObject, Sendable {
    var name: String { get }

    /// The envs present at `location`, lower-case.
    func envs(at location: String?) throws(SecretsError) -> [String]

    /// The fields of one env at `location`, or nil when that env does not exist there.
    func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]?

    /// One key: its value in the first of `layers` (env names, highest priority first) that holds it, matching the
    /// key exactly first and then ignoring case, as Dynaconf does. This call goes to the backend every time.
    func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue?

    /// Starts pushing change notices (for example file watches, keyspace events) for the store's own location and
    /// `locations` (the paths scope chains read this store at). Returns false when the store cannot push, in which
    /// case cached values refresh after their ttl only. Bursts are coalesced: one call carries every change seen
    /// within a few milliseconds.
    func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool

    /// Stops watches and releases connections.
    func close()

    /// How long one operation on this store may wait on its backend in total (its `timeout`); nil when it does not
    /// wait on anything remote. The core bounds each read that reaches the store by it.
    var operationTimeout: Double? { get }

    /// The longest a view of this store may stay cached (nil: the config's ttl). A store that must see reads to
    /// know it is still used (a leased store with `idle_revoke`) bounds it, so every reader reaches it that often.
    var cacheBound: Double? { get }

    /// `lease_per`: whose reads share a lease (nil: everyone's; see `LeasePer`).
    var leasePer: LeasePer? { get }

    /// How much longer values of `env` may be served from a cache, fresh or stale (nil: no limit). A leased store
    /// says until its lease's expiry, and 0 when it holds none, so an expired credential is never served.
    func valueLifetime(env: String) -> Double?
}

extension SecretStore {
    public func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        for layer in layers {
            guard let fields = try fields(of: layer, at: location) else { continue }
            if let value = Self.match(key, in: fields) { return value }
        }
        return nil
    }

    public func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool { false }

    /// Watches the store's own location only.
    public func watch(_ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool { watch(locations: [], onChange) }

    public func close() {}

    public var operationTimeout: Double? { nil }

    public var cacheBound: Double? { nil }

    public var leasePer: LeasePer? { nil }

    public func valueLifetime(env: String) -> Double? { nil }

    /// Exact key first, then the first key equal ignoring case (in sorted order, so the choice is stable).
    public static func match(_ key: String, in fields: [String: SecretValue]) -> SecretValue? {
        if let exact = fields[key] { return exact }
        let folded = key.lowercased()
        for candidate in fields.keys.sorted() where candidate.lowercased() == folded {
            return fields[candidate]
        }
        return nil
    }
}

/// A store that `set`, `write`, `import` and `--delete` can change. `location` is a scope level's path (nil: the
/// store's own); reads of the same env and location see the write (writes land where reads look).
public protocol WritableSecretStore: SecretStore {
    /// Sets keys, removes keys, or with `replace` makes the env hold exactly `set`, in one write.
    func update(env: String, at location: String?, set: [(String, SecretValue)], remove: [String], replace: Bool)
        throws(SecretsError)
}
