/// `lease_per` of a leased store: whose reads share a lease. `unit`: each systemd unit's processes (their cgroup,
/// up to the unit's own); `pod`: each Kubernetes pod's (up to the pod's cgroup). A caller with no such cgroup (the
/// daemon itself, an API read, a process of no unit) shares the store's one lease.
///
/// The core reads such a store's role `r` for a caller as env `r#<cgroup>`, so each identity gets its own view,
/// nodes and change notices; the store mints a lease per such env and revokes it when the cgroup is gone.
public enum LeasePer: String, Sendable {
    case unit
    case pod

    public static let separator: Character = "#"

    /// The cgroup path (as /proc/<pid>/cgroup gives it) that names the caller's unit or pod, if any.
    public func identity(ofCgroup cgroup: String) -> String? {
        let components = cgroup.split(separator: "/")
        switch self {
        case .unit:
            guard let index = components.lastIndex(where: { $0.hasSuffix(".service") || $0.hasSuffix(".scope") })
            else { return nil }
            return "/" + components[...index].joined(separator: "/")
        case .pod:
            for index in components.indices
            where PodIdentity.podUID(inCgroup: String(components[index])) != nil {
                return "/" + components[...index].joined(separator: "/")
            }
            return nil
        }
    }

    /// The env a caller identity's reads go to.
    public static func env(_ env: String, identity: String) -> String { env + String(separator) + identity }

    /// The directory's env of an env that may carry an identity (`app#/system.slice/a.service` → `app`).
    public static func baseEnv(_ env: String) -> String {
        guard let index = env.firstIndex(of: separator) else { return env }
        return String(env[..<index])
    }

    /// The identity an env carries, if any.
    public static func identity(in env: String) -> String? {
        guard let index = env.firstIndex(of: separator) else { return nil }
        return String(env[env.index(after: index)...])
    }
}
