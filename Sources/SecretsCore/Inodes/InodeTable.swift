/// One node the kernel may still ask about, in the stable form that outlives a worker: ids, names, sizes, times and
/// a keyed digest, never a value. The inode table hands these to its journal; the supervisor keeps them.
public enum NodeRecord: Sendable, Equatable {
    case directory(inode: UInt64, top: String?, env: String?)
    case file(FileRecord)
    /// A published CSI volume's view (nil: the `.csi` directory that holds the views). Removed at unpublish.
    case volume(inode: UInt64, CSIVolume?)

    public var inode: UInt64 {
        switch self {
        case .directory(let inode, _, _): return inode
        case .file(let file): return file.inode
        case .volume(let inode, _): return inode
        }
    }
}

/// A file node: where its value came from and a keyed digest of the value it was created with, so that a later
/// worker can tell whether a value it fetches again is the same one.
public struct FileRecord: Sendable, Equatable {
    public var inode: UInt64
    public var parent: UInt64
    public var top: String
    public var env: String
    public var key: String
    public var size: Int
    public var modifiedSeconds: Int
    public var modifiedNanoseconds: Int
    public var digest: [UInt8]
    /// The CSI volume whose view the node is in ("": the tree's own node).
    public var view: String

    public init(
        inode: UInt64, parent: UInt64, top: String, env: String, key: String, size: Int, modifiedSeconds: Int,
        modifiedNanoseconds: Int, digest: [UInt8], view: String = ""
    ) {
        self.view = view
        self.inode = inode
        self.parent = parent
        self.top = top
        self.env = env
        self.key = key
        self.size = size
        self.modifiedSeconds = modifiedSeconds
        self.modifiedNanoseconds = modifiedNanoseconds
        self.digest = digest
    }
}

/// What happened in the table that the next worker on the connection must know. Collected while the table is
/// locked and reported after the lock is released (the journal writes to a socket).
public enum NodeEvent: Sendable, Equatable {
    case issued(NodeRecord)
    case forgotten(UInt64)
}

/// The inode table: every directory, every file node the kernel may hold, which node each path's name leads to now.
/// A pure value: no locks, no clocks, no I/O; its owner locks it and reports the events it returns.
///
/// Every file node is an immutable snapshot of one value. When a key's value changes, the name is given a *new*
/// node; handles already open keep the old one (one open, one value). Ids are never reused on one connection.
public struct InodeTable: Sendable {
    public static let rootInode: UInt64 = 1

    public enum DirectoryKind: Hashable, Sendable {
        case root
        case top(String)
        case env(top: String, env: String)
        /// `.csi`, the directory of the published CSI volumes' views (never listed).
        case volumes
        /// One published volume's view, by volume id.
        case volume(String)
    }

    public struct FilePath: Hashable, Sendable {
        public var top: String
        public var env: String
        public var key: String
        /// The CSI volume whose view the name is in ("": the tree's own name). A view has nodes of its own, since
        /// their owner and modes are the pod's.
        public var view: String

        public init(top: String, env: String, key: String, view: String = "") {
            self.top = top
            self.env = env
            self.key = key
            self.view = view
        }
    }

    public struct FileNode: Sendable {
        public var path: FilePath
        public var parent: UInt64
        /// Nil for a node inherited from an earlier worker until its value has been fetched again and matched.
        public var bytes: SecretBytes?
        public var size: Int
        public var digest: [UInt8]
        public var modified: WallTime
        var lookups: UInt64
        /// Issued by an earlier worker: its lookup count is unknown, so the first forget releases it.
        public var inherited: Bool

        /// Whether this node holds `value`: by its bytes, or for an inherited node by the digest.
        public func holds(_ value: SecretBytes?, digest: (SecretBytes) -> [UInt8]) -> Bool {
            guard let value else { return false }
            if let bytes { return bytes == value }
            return value.count == size && constantTimeEqual(digest(value), self.digest)
        }

        func record(_ inode: UInt64) -> NodeRecord {
            .file(
                FileRecord(
                    inode: inode, parent: parent, top: path.top, env: path.env, key: path.key, size: size,
                    modifiedSeconds: modified.seconds, modifiedNanoseconds: modified.nanoseconds, digest: digest,
                    view: path.view))
        }
    }

    public private(set) var nextInode: UInt64 = rootInode + 1
    public private(set) var directories: [UInt64: DirectoryKind] = [rootInode: .root]
    private var directoryInodes: [DirectoryKind: UInt64] = [.root: rootInode]
    public private(set) var files: [UInt64: FileNode] = [:]
    /// The node each path's name leads to now.
    public private(set) var current: [FilePath: UInt64] = [:]
    /// The published CSI volumes, by volume id.
    public private(set) var volumes: [String: CSIVolume] = [:]

    public init() {}

    private mutating func allocate() -> UInt64 {
        defer { nextInode += 1 }
        return nextInode
    }

    /// The id of a directory, issued on first use (with its event).
    public mutating func directoryInode(_ kind: DirectoryKind, events: inout [NodeEvent]) -> UInt64 {
        if let inode = directoryInodes[kind] { return inode }
        let inode = allocate()
        directoryInodes[kind] = inode
        directories[inode] = kind
        events.append(.issued(kind.record(inode, volume: nil)))
        return inode
    }

    /// Publishes a CSI volume's view: its directory id, the same for a publish repeated with the same volume.
    /// Nil when `id` is already published differently (another target, path or pod).
    public mutating func publish(_ volume: CSIVolume, events: inout [NodeEvent]) -> UInt64? {
        if let existing = volumes[volume.id] {
            guard existing == volume else { return nil }
            return directoryInodes[.volume(volume.id)]
        }
        _ = directoryInode(.volumes, events: &events)
        let inode = allocate()
        directoryInodes[.volume(volume.id)] = inode
        directories[inode] = .volume(volume.id)
        volumes[volume.id] = volume
        events.append(.issued(.volume(inode: inode, volume)))
        return inode
    }

    /// Removes a volume's view (after its bind mount is gone); nodes still held stay until forgotten. False when
    /// it was not published.
    @discardableResult
    public mutating func unpublish(_ id: String, events: inout [NodeEvent]) -> Bool {
        guard volumes.removeValue(forKey: id) != nil, let inode = directoryInodes.removeValue(forKey: .volume(id)) else {
            return false
        }
        directories.removeValue(forKey: inode)
        for path in current.keys where path.view == id { current.removeValue(forKey: path) }
        events.append(.forgotten(inode))
        return true
    }

    /// The id of a directory already issued, if any (no new id).
    public func existingDirectory(_ kind: DirectoryKind) -> UInt64? { directoryInodes[kind] }

    /// A lookup of `path` holding `bytes`: the node the name leads to when it still holds that value and this
    /// worker counted all its lookups, else a new node the name leads to from now on.
    public mutating func fileLookup(
        _ path: FilePath, parent: UInt64, bytes: SecretBytes, now: WallTime, digest: (SecretBytes) -> [UInt8],
        events: inout [NodeEvent]
    ) -> (UInt64, FileNode) {
        // An inherited node is never handed out again: its lookup count is unknown here, so only a node whose every
        // lookup this worker counted can be reused without racing the kernel's forget of the old one.
        if let inode = current[path], var node = files[inode], !node.inherited, node.holds(bytes, digest: digest) {
            node.lookups += 1
            files[inode] = node
            return (inode, node)
        }
        let inode = allocate()
        let node = FileNode(
            path: path, parent: parent, bytes: bytes, size: bytes.count, digest: digest(bytes), modified: now,
            lookups: 1, inherited: false)
        files[inode] = node
        current[path] = inode
        events.append(.issued(node.record(inode)))
        return (inode, node)
    }

    /// The kernel dropped `count` references; a file node with none left is released (its bytes wiped with it).
    public mutating func forget(_ inode: UInt64, count: UInt64, events: inout [NodeEvent]) {
        guard var node = files[inode] else { return }
        node.lookups = node.lookups > count ? node.lookups - count : 0
        // The kernel forgets a node when it evicts it, with its whole count; an inherited node's count is unknown
        // here, so its first forget is taken as that one.
        if node.lookups == 0 || node.inherited {
            files.removeValue(forKey: inode)
            if current[node.path] == inode { current.removeValue(forKey: node.path) }
            events.append(.forgotten(inode))
        } else {
            files[inode] = node
        }
    }

    /// An inherited node fetched again: keeps `bytes` when they match its digest; false when the value changed.
    public mutating func confirm(_ inode: UInt64, bytes: SecretBytes, digest: (SecretBytes) -> [UInt8]) -> Bool {
        guard var node = files[inode], node.holds(bytes, digest: digest) else { return false }
        node.bytes = bytes
        files[inode] = node
        return true
    }

    /// A kubelet-layout swap: the link made as `from` (`..data_tmp`) is now `to` (`..data`); the node `to` led to
    /// leads nowhere now. Its record is issued again under the new name. Nil when `from` leads nowhere.
    public mutating func moveLink(_ from: FilePath, to: FilePath, events: inout [NodeEvent]) -> UInt64? {
        guard let inode = current[from], var node = files[inode] else { return nil }
        current.removeValue(forKey: from)
        node.path = to
        files[inode] = node
        current[to] = inode
        events.append(.issued(node.record(inode)))
        return inode
    }

    /// The name of `path` leads nowhere now (its value changed); the node stays for the handles that hold it.
    public mutating func detach(_ path: FilePath) { current.removeValue(forKey: path) }

    /// Takes over the nodes earlier workers issued on this connection. Directory ids stay what they were (a
    /// container's bind mount holds one); file nodes come back without their bytes.
    public mutating func adopt(_ records: [NodeRecord], nextInode: UInt64) {
        for record in records {
            switch record {
            case .directory(let inode, let top, let env):
                let kind: DirectoryKind
                switch (top, env) {
                case (let top?, let env?): kind = .env(top: top, env: env)
                case (let top?, nil): kind = .top(top)
                default: kind = .root
                }
                if kind == .root && inode != Self.rootInode { continue }
                directories[inode] = kind
                directoryInodes[kind] = inode
            case .volume(let inode, let volume):
                let kind: DirectoryKind = volume.map { .volume($0.id) } ?? .volumes
                directories[inode] = kind
                directoryInodes[kind] = inode
                if let volume { volumes[volume.id] = volume }
            case .file(let file):
                let path = FilePath(top: file.top, env: file.env, key: file.key, view: file.view)
                files[file.inode] = FileNode(
                    path: path, parent: file.parent, bytes: nil, size: file.size, digest: file.digest,
                    modified: (file.modifiedSeconds, file.modifiedNanoseconds),
                    lookups: 1, inherited: true)
                if (current[path] ?? 0) < file.inode { current[path] = file.inode }
            }
        }
        self.nextInode = max(self.nextInode, nextInode)
    }

    /// The parent of a directory, for `..`.
    public func parent(of inode: UInt64) -> UInt64 {
        switch directories[inode] {
        case .env(let top, _)?: return directoryInodes[.top(top)] ?? Self.rootInode
        case .volume?: return directoryInodes[.volumes] ?? Self.rootInode
        default: return Self.rootInode
        }
    }
}

extension InodeTable.DirectoryKind {
    func record(_ inode: UInt64, volume: CSIVolume?) -> NodeRecord {
        switch self {
        case .root: return .directory(inode: inode, top: nil, env: nil)
        case .top(let top): return .directory(inode: inode, top: top, env: nil)
        case .env(let top, let env): return .directory(inode: inode, top: top, env: env)
        case .volumes, .volume: return .volume(inode: inode, volume)
        }
    }
}

/// Compares two digests in time independent of where they differ.
public func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
}
