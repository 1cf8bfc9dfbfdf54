import Metrics

/// The one access and audit path of every front door (the mount's lookups, the Dapr API, `get`, `run`): a caller the
/// path's `allow` list does not name is refused with EACCES, every outcome is counted in `secretsfs_reads_total`
/// (by top and kind: cached, fresh, stale, denied, not_found, error), and audited paths are recorded with the
/// caller and the front door.
public struct AccessGate: Sendable {
    public let policy: AccessPolicy
    let audit: AuditLog?
    let callerDetails: @Sendable (Int32) -> CallerDetails

    public init(
        policy: AccessPolicy, audit: AuditLog?,
        callerDetails: @escaping @Sendable (Int32) -> CallerDetails = CallerDetails.read(pid:)
    ) {
        self.policy = policy
        self.audit = audit
        self.callerDetails = callerDetails
    }

    /// A caller refused before any rule is asked (a CSI view that serves another pod): counted and audited as a
    /// denial like any other; returns the error to throw.
    public func deny(_ path: InodeTable.FilePath, caller: Caller, via: String, _ message: String) -> SecretsError {
        Counter(label: "secretsfs_reads_total", dimensions: [("top", path.top), ("kind", "denied")]).increment()
        if let audit, policy.isAudited(top: path.top, env: path.env, key: path.key) {
            audit.record(
                AuditEntry(
                    via: via, path: "\(path.top)/\(path.env)/\(path.key)", decision: .denied, caller: caller,
                    details: callerDetails(caller.pid), cache: nil, keys: nil))
        }
        return SecretsError(.permissionDenied, message)
    }

    /// One read of `path` by `caller` (nil: the daemon itself or an API client, to which no `allow` rule applies)
    /// through `via`. `body` reads and says how ("cached", "fresh", "stale").
    public func read<T>(
        _ path: InodeTable.FilePath, caller: Caller?, via: String, _ body: () throws(SecretsError) -> (T, String)
    ) throws(SecretsError) -> T {
        try read(path, caller: caller, via: via, usingKeys: { () throws(SecretsError) in
            let (result, cache) = try body()
            return (result, cache, nil)
        })
    }

    /// As `read`, for a rendered file: `body` also says which keys it used, and the audit line names them.
    public func read<T>(
        _ path: InodeTable.FilePath, caller: Caller?, via: String,
        usingKeys body: () throws(SecretsError) -> (T, String, [String]?)
    ) throws(SecretsError) -> T {
        let audited = audit != nil && caller != nil && policy.isAudited(top: path.top, env: path.env, key: path.key)
        var details: CallerDetails?
        func known(_ caller: Caller) -> CallerDetails {
            if let details { return details }
            let read = callerDetails(caller.pid)
            details = read
            return read
        }
        func record(_ decision: AuditEntry.Decision, _ cache: String?, keys: [String]? = nil) {
            let kind: String
            switch decision {
            case .allowed: kind = cache ?? "cached"
            case .denied: kind = "denied"
            case .notFound: kind = "not_found"
            case .error: kind = "error"
            }
            Counter(label: "secretsfs_reads_total", dimensions: [("top", path.top), ("kind", kind)]).increment()
            guard audited, let audit, let caller else { return }
            audit.record(
                AuditEntry(
                    via: via, path: "\(path.top)/\(path.env)/\(path.key)", decision: decision, caller: caller,
                    details: known(caller), cache: cache, keys: keys))
        }
        if let caller, !policy.allows(caller, top: path.top, env: path.env, key: path.key, details: { known(caller) }) {
            record(.denied, nil)
            throw SecretsError(
                .permissionDenied,
                "access rule: caller uid \(caller.uid) pid \(caller.pid) may not open '\(path.top)/\(path.env)/\(path.key)'")
        }
        do {
            let (result, cache, keys) = try body()
            record(.allowed, cache, keys: keys)
            return result
        } catch {
            record(error.code == .notFound ? .notFound : .error, nil)
            throw error
        }
    }
}
