/// A Kubernetes pod as kubelet names it to a CSI driver (`podInfoOnMount: true`): who a volume's view serves.
public struct PodIdentity: Sendable, Equatable, Hashable {
    public var uid: String
    public var name: String
    public var namespace: String
    public var serviceAccount: String

    public init(uid: String, name: String, namespace: String, serviceAccount: String) {
        self.uid = uid
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    /// The pod uid in a cgroup path: kubelet's cgroupfs driver names a pod's cgroup `pod<uid>`
    /// (`/kubepods/besteffort/pod1f2e...-.../<container>`), its systemd driver
    /// `kubepods-<qos>-pod<uid with underscores>.slice`. Nil for a process outside every pod.
    public static func podUID(inCgroup cgroup: String) -> String? {
        for component in cgroup.split(separator: "/").reversed() {
            if component.hasSuffix(".slice") {
                guard let last = component.dropLast(6).split(separator: "-").last, last.hasPrefix("pod") else { continue }
                let uid = String(last.dropFirst(3).map { $0 == "_" ? "-" : $0 })
                if isUID(uid) { return uid.lowercased() }
            } else if component.hasPrefix("pod") {
                let uid = String(component.dropFirst(3))
                if isUID(uid) { return uid.lowercased() }
            }
        }
        return nil
    }

    /// A pod uid as Kubernetes issues them: a UUID, 8-4-4-4-12 hex digits.
    public static func isUID(_ text: String) -> Bool {
        let groups = text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12] else { return false }
        return groups.allSatisfy { $0.allSatisfy(\.isHexDigit) }
    }
}

/// One published CSI volume: a read-only view of `<top>/<env>` (optionally only the keys its globs match) that
/// serves only the processes of one pod. It lives in the node table, so every later worker on the connection
/// serves it with the same directory id the pod's bind mount holds.
public struct CSIVolume: Sendable, Equatable {
    /// kubelet's volume_id (`csi-<hash>` for an inline volume): the view's name under `.csi`.
    public var id: String
    public var top: String
    public var env: String
    /// Globs of the keys the view shows; empty: every key of the env.
    public var keys: [String]
    public var pod: PodIdentity
    /// The pod's fsGroup (`volume_mount_group`): the view's files are then group-readable by it.
    public var group: UInt32?
    /// Where kubelet asked for it.
    public var targetPath: String

    public init(
        id: String, top: String, env: String, keys: [String], pod: PodIdentity, group: UInt32?, targetPath: String
    ) {
        self.id = id
        self.top = top
        self.env = env
        self.keys = keys
        self.pod = pod
        self.group = group
        self.targetPath = targetPath
    }

    /// The directory under the mount point a publish binds from.
    public static let directory = ".csi"

    /// Whether the view shows `key`.
    public func shows(_ key: String) -> Bool {
        keys.isEmpty || keys.contains { Glob($0).matches(key) }
    }

    /// Whether `details` (a caller's) belong to this volume's pod.
    public func serves(_ details: CallerDetails) -> Bool {
        details.cgroup.flatMap(PodIdentity.podUID(inCgroup:)) == pod.uid.lowercased()
    }

    /// The mode and owner of the view's files and directory: readable by everyone in the pod (the view itself
    /// refuses every other caller), or only by owner and the fsGroup when kubelet passed one.
    public var fileMode: UInt32 { group == nil ? 0o444 : 0o440 }
    public var directoryMode: UInt32 { group == nil ? 0o555 : 0o550 }
}
