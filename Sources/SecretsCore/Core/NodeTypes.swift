/// What the kernel is told about a file or directory.
public struct NodeAttributes: Sendable, Equatable {
    public var inode: UInt64
    public var isDirectory: Bool
    public var size: Int
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Fixed for the life of the inode.
    public var modified: WallTime
    /// A file no name leads to any more (its value changed; open handles still read the old value): link count 0,
    /// as for an unlinked file, so the kernel keeps it unlinked and watchers on it get IN_DELETE_SELF.
    public var detached = false
    /// `..data` of a kubelet-layout directory (its target is the node's content).
    public var isSymlink = false

    public static func == (lhs: NodeAttributes, rhs: NodeAttributes) -> Bool {
        lhs.inode == rhs.inode && lhs.isDirectory == rhs.isDirectory && lhs.size == rhs.size && lhs.mode == rhs.mode
            && lhs.uid == rhs.uid && lhs.gid == rhs.gid && lhs.modified == rhs.modified && lhs.detached == rhs.detached
            && lhs.isSymlink == rhs.isSymlink
    }
}

/// The answer to a lookup: the node and how long the kernel may keep the name and the attributes.
public struct EntryReply: Sendable {
    public var attributes: NodeAttributes
    public var entryTimeout: Double
    public var attributeTimeout: Double
}

public struct DirectoryEntry: Sendable, Equatable {
    public var name: String
    public var inode: UInt64
    public var isDirectory: Bool

    public init(name: String, inode: UInt64, isDirectory: Bool) {
        self.name = name
        self.inode = inode
        self.isDirectory = isDirectory
    }
}

/// What /status shows and /healthz decides from.
public struct CoreStatus: Sendable {
    public var stores: [(name: String, health: StoreHealth)]
    public var liveInodes: Int
    public var cachedEnvs: Int
    public var notices: Int
    public var lastNotice: WallTime?
    public var workerRestarts: UInt64
    /// The leased stores' current leases (never a value or a lease id).
    public var leases: [LeaseSummary] = []

    public var failing: [String] { stores.filter { !$0.health.ok }.map(\.name) }
}

/// One current lease of a leased store, for /status and `secretsfs status`.
public struct LeaseSummary: Sendable, Equatable {
    public var store: String
    public var role: String
    public var secondsLeft: Int
    public var renewable: Bool

    public init(store: String, role: String, secondsLeft: Int, renewable: Bool) {
        self.store = store
        self.role = role
        self.secondsLeft = secondsLeft
        self.renewable = renewable
    }
}

/// A store that holds leases (`vault-database`, `vault-pki`) says which, for the status.
public protocol LeaseReporting {
    func leaseSummaries() -> [LeaseSummary]
}

/// A lease a leased store holds, in the form the next worker on the mount takes over (it travels only inside the
/// sealed view snapshot): a worker crash, a reload or a takeover keeps the lease instead of minting another.
/// Times are CLOCK_MONOTONIC, shared by the processes of one boot.
public struct CarriedLease: Sendable {
    public var store: String
    public var role: String
    /// Vault's lease id (nil: a certificate, nothing to renew or revoke).
    public var id: String?
    public var fields: [String: SecretValue]
    public var renewable: Bool
    public var duration: Double
    public var renewAt: Double
    public var expires: Double

    public init(
        store: String, role: String, id: String?, fields: [String: SecretValue], renewable: Bool, duration: Double,
        renewAt: Double, expires: Double
    ) {
        self.store = store
        self.role = role
        self.id = id
        self.fields = fields
        self.renewable = renewable
        self.duration = duration
        self.renewAt = renewAt
        self.expires = expires
    }
}

/// A store whose leases outlive its worker (`type = "vault-database"`, `"vault-pki"`).
public protocol LeaseCarrying: Sendable {
    /// The leases held now.
    func carriedLeases() -> [CarriedLease]
    /// Takes the previous worker's leases (its own store's, roles it serves, not expired or about to).
    func adopt(_ leases: [CarriedLease])
    /// Called whenever a lease is minted, renewed, rotated or dropped (the worker rewrites its snapshot).
    func onLeasesChange(_ callback: (@Sendable () -> Void)?)
}
