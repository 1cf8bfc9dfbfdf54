import Logging
import Metrics
import Locking

/// The filesystem without FUSE, a façade over its parts: the inode table (`InodeRegistry`), the reader every front
/// door uses (`SecretReader`, with `EnvViewCache` and `FreshFetcher`), the access and audit path (`AccessGate`),
/// change propagation and store health. Pure Swift, unit-tested without a mount.
///
/// Freshness is decided at lookup: fresh keys get entry timeout 0, so every path walk asks again and refetches;
/// cached keys keep their name for the rest of their ttl. Each file node is a snapshot of one value (see
/// `InodeTable`), so the kernel may serve cached files without asking the daemon (no_open, keep_cache).
public final class FileSystemCore: Sendable {
    public static let rootInode = InodeTable.rootInode
    /// Attributes of an inode never change, so the kernel may keep them long.
    public static let fileAttributeTimeout: Double = 86_400
    /// The extended attribute that says where a file's value comes from: `level=… store=… env=…` of the level that
    /// serves it now (a backend call; never the value).
    public static let sourceAttribute = "user.secretsfs.source"
    public static let versionAttribute = "user.secretsfs.version"

    public let resolver: Resolver
    public let reader: SecretReader
    public let policy: AccessPolicy
    let gate: AccessGate
    let inodes: InodeRegistry
    let health: StoreHealthBoard
    let changes: ChangePropagation
    let listings: EnvListingCache
    let lookupFailures = LookupFailureMemo()
    let cache: CacheConfig
    let clock: @Sendable () -> Double
    let mountedAt: WallTime
    let workerRestarts = Locked<UInt64>(0)

    public init(
        config: Config, resolver: Resolver, logger: Logger,
        clock: @escaping @Sendable () -> Double = CoreClock.monotonic, audit: AuditLog? = nil,
        callerDetails: @escaping @Sendable (Int32) -> CallerDetails = CallerDetails.read(pid:)
    ) {
        self.resolver = resolver
        self.cache = config.cache
        self.clock = clock
        self.policy = AccessPolicy(config: config)
        let inodes = InodeRegistry()
        self.inodes = inodes
        // A caller in a pod a CSI volume was published for is known by that pod's identity (rules, audit).
        self.gate = AccessGate(policy: policy, audit: audit, callerDetails: { pid in
            var details = callerDetails(pid)
            if let uid = details.cgroup.flatMap(PodIdentity.podUID(inCgroup:)) {
                details.pod = inodes.read { $0.volumes.values.first { $0.pod.uid == uid }?.pod }
            }
            return details
        })
        self.health = StoreHealthBoard(clock: clock, logger: logger)
        let views = EnvViewCache(
            resolver: resolver, health: health, ttl: config.cache.ttl, staleIfError: config.cache.staleIfError)
        let fresh = FreshFetcher(resolver: resolver, health: health, clock: clock)
        self.reader = SecretReader(resolver: resolver, views: views, fresh: fresh, health: health, gate: gate)
        self.changes = ChangePropagation(
            resolver: resolver, views: views, inodes: inodes, health: health, clock: clock, logger: logger)
        self.listings = EnvListingCache(maxAge: config.cache.ttl)
        self.mountedAt = CoreClock.wall()
    }

    public func setNotifier(_ notifier: (any KernelNotifier)?) { changes.notifier.withLock { $0 = notifier } }

    /// Takes over the nodes earlier workers issued on this connection and reports every new one to `handoff`.
    public func adopt(_ records: [NodeRecord], nextInode: UInt64, handoff: NodeHandoff) {
        inodes.adopt(records, nextInode: nextInode, handoff: handoff)
    }

    /// How long the kernel may keep a directory's name and attributes.
    var directoryTimeout: Double { min(cache.ttl, 60) }

    // MARK: - Lookup

    /// `caller` is who walks the path (nil: the daemon itself, no access rules apply).
    public func lookup(parent: UInt64, name: String, caller: Caller? = nil) throws(SecretsError) -> EntryReply {
        guard let kind = inodes.read({ $0.directories[parent] }) else {
            throw SecretsError(.notFound, "unknown directory inode \(parent)")
        }
        switch kind {
        case .root:
            if name == CSIVolume.directory, let inode = inodes.read({ $0.existingDirectory(.volumes) }) {
                return EntryReply(
                    attributes: directoryAttributes(inode), entryTimeout: directoryTimeout,
                    attributeTimeout: directoryTimeout)
            }
            guard resolver.tops[name] != nil else { throw SecretsError(.notFound, "no store or scope '\(name)'") }
            return directoryEntry(.top(name))
        case .volumes:
            guard let inode = inodes.read({ $0.existingDirectory(.volume(name)) }) else {
                throw SecretsError(.notFound, "no CSI volume '\(name)' is published")
            }
            return EntryReply(attributes: directoryAttributes(inode), entryTimeout: 0, attributeTimeout: directoryTimeout)
        case .volume(let id):
            let volume = try admit(caller, to: id, key: name)
            guard EntryName.isValid(name), volume.shows(name) else {
                throw SecretsError(.notFound, "no key '\(name)' in this volume")
            }
            let path = InodeTable.FilePath(top: volume.top, env: volume.env, key: name, view: id)
            let own = InodeTable.FilePath(
                top: volume.top, env: callerEnv(top: volume.top, env: volume.env, caller: caller), key: name, view: id)
            // Every open through a view is checked: entry timeout 0.
            return try gate.read(path, caller: caller, via: "csi", usingKeys: { () throws(SecretsError) in
                var (reply, cache, keys) = try lookupFailures.answer(own) { () throws(SecretsError) in
                    try fileEntry(own, parent: parent)
                }
                reply.entryTimeout = 0
                return (reply, cache, keys)
            })
        case .top(let top):
            // A file of every env ([[files]] path = "<top>/<name>") beside the env directories.
            if resolver.rendered.file(top: top, env: RenderedFiles.allEnvs, name: name) != nil {
                let path = InodeTable.FilePath(top: top, env: RenderedFiles.allEnvs, key: name)
                return try gate.read(path, caller: caller, via: "mount", usingKeys: { () throws(SecretsError) in
                    var (reply, cache, keys) = try lookupFailures.answer(path) { () throws(SecretsError) in
                        try fileEntry(path, parent: parent)
                    }
                    if policy.needsEveryOpen(top: top, env: RenderedFiles.allEnvs, key: name) { reply.entryTimeout = 0 }
                    return (reply, cache, keys)
                })
            }
            guard EntryName.isValid(name) else { throw SecretsError(.notFound, "no env with such a name") }
            let env: String?
            do {
                let folded = name.lowercased()
                if listings.knows(folded, top: top, now: clock()) {
                    env = folded
                } else if let last = staleListing(top), last.contains(folded) {
                    let timeout = min(1, directoryTimeout)
                    let inode = inodes.update { table, _, events in
                        table.directoryInode(.env(top: top, env: folded), events: &events)
                    }
                    return EntryReply(
                        attributes: directoryAttributes(inode), entryTimeout: timeout, attributeTimeout: timeout)
                } else {
                    env = try probe(top).contains(folded) ? folded : nil
                }
            } catch {
                health.warn(top: top, "listing envs of '\(top)' failed: \(error)")
                // An env already seen stays while its store fails, so that cached keys under it keep being served
                // for stale_if_error; fresh keys still fail on their own.
                // So does one in the last listing kept (a previous worker's, or the persisted cache's at a start).
                let seen = InodeTable.DirectoryKind.env(top: top, env: name.lowercased())
                let listed = listings.fallback(top: top, now: clock(), within: cache.ttl + cache.staleIfError)?
                    .contains(name.lowercased()) ?? false
                if cache.staleIfError > 0, let inode = inodes.read({ $0.existingDirectory(seen) })
                    ?? (listed ? inodes.update({ table, _, events in table.directoryInode(seen, events: &events) }) : nil)
                {
                    let timeout = min(1, directoryTimeout)
                    return EntryReply(
                        attributes: directoryAttributes(inode), entryTimeout: timeout, attributeTimeout: timeout)
                }
                throw error
            }
            guard let env else { throw SecretsError(.notFound, "no env '\(name)' in '\(top)'") }
            return directoryEntry(.env(top: top, env: env))
        case .env(let top, let env):
            if Self.isLinkName(name), resolver.hasKubernetesLayout(top) {
                return try linkEntry(InodeTable.FilePath(top: top, env: env, key: name), parent: parent, create: false)
            }
            guard EntryName.isValid(name) else { throw SecretsError(.notFound, "no key with such a name") }
            let path = InodeTable.FilePath(top: top, env: env, key: name)
            // lease_per: the caller's unit or pod reads its own lease, through nodes of its own.
            let own = InodeTable.FilePath(top: top, env: callerEnv(top: top, env: env, caller: caller), key: name)
            // Paths with an `allow` list or audited get entry timeout 0, so every open is checked and recorded.
            return try gate.read(path, caller: caller, via: "mount", usingKeys: { () throws(SecretsError) in
                var (reply, cache, keys) = try lookupFailures.answer(own) { () throws(SecretsError) in
                    try fileEntry(own, parent: parent)
                }
                if policy.needsEveryOpen(top: top, env: env, key: name) || own != path { reply.entryTimeout = 0 }
                return (reply, cache, keys)
            })
        }
    }

    /// The env `caller`'s reads of `top/env` go to: with `lease_per`, `env#<cgroup of its unit or pod>`; else `env`.
    func callerEnv(top: String, env: String, caller: Caller?) -> String {
        guard let per = resolver.leasePer(top: top), let caller,
            let identity = gate.callerDetails(caller.pid).cgroup.flatMap(per.identity(ofCgroup:))
        else { return env }
        return LeasePer.env(env, identity: identity)
    }

    private func directoryEntry(_ kind: InodeTable.DirectoryKind) -> EntryReply {
        let inode = inodes.update { table, _, events in table.directoryInode(kind, events: &events) }
        return EntryReply(
            attributes: directoryAttributes(inode), entryTimeout: directoryTimeout, attributeTimeout: directoryTimeout)
    }

    // MARK: - The kubelet layout (`layout = "kubernetes"`)

    /// `..data`'s target: the directory itself, so that `..data/KEY` is `KEY`.
    static let linkTarget = "."

    static func isLinkName(_ name: String) -> Bool {
        name == DirectoryLayout.dataLink || name == DirectoryLayout.dataLinkTemporary
    }

    /// `..data` (always there), or `..data_tmp` (only between the daemon's own symlink and rename). Entry and
    /// attribute timeouts 0: the kernel asks at every walk, so a swap is seen at once and no worker need know the
    /// links an earlier one made.
    private func linkEntry(
        _ path: InodeTable.FilePath, parent: UInt64, create: Bool
    ) throws(SecretsError) -> EntryReply {
        let now = CoreClock.wall()
        let attributes = inodes.update { table, digest, events -> NodeAttributes? in
            if path.key != DirectoryLayout.dataLink, !create, table.current[path] == nil { return nil }
            let (inode, node) = table.fileLookup(
                path, parent: parent, bytes: SecretBytes(Array(Self.linkTarget.utf8)), now: now, digest: digest,
                events: &events)
            return fileAttributes(inode, node, in: table)
        }
        guard let attributes else { throw SecretsError(.notFound, "no '\(path.key)' now") }
        return EntryReply(attributes: attributes, entryTimeout: 0, attributeTimeout: 0)
    }

    /// The env directory of a kubelet-layout top that `inode` is, or EROFS.
    private func kubernetesDirectory(_ inode: UInt64) throws(SecretsError) -> (top: String, env: String) {
        guard case .env(let top, let env)? = inodes.read({ $0.directories[inode] }), resolver.hasKubernetesLayout(top)
        else {
            throw SecretsError(.readOnly, "read-only file system")
        }
        return (top, env)
    }

    /// The daemon's own `symlink(".", "<dir>/..data_tmp")` (the first half of a swap). Anything else is EROFS.
    public func makeDataLink(parent: UInt64, name: String, target: String) throws(SecretsError) -> EntryReply {
        let (top, env) = try kubernetesDirectory(parent)
        guard name == DirectoryLayout.dataLinkTemporary, target == Self.linkTarget else {
            throw SecretsError(.readOnly, "read-only file system")
        }
        return try linkEntry(InodeTable.FilePath(top: top, env: env, key: name), parent: parent, create: true)
    }

    /// The daemon's own `rename("<dir>/..data_tmp", "<dir>/..data")` (the second half). Anything else is EROFS.
    public func swapDataLink(parent: UInt64, name: String, newParent: UInt64, newName: String) throws(SecretsError) {
        let (top, env) = try kubernetesDirectory(parent)
        guard newParent == parent, name == DirectoryLayout.dataLinkTemporary, newName == DirectoryLayout.dataLink else {
            throw SecretsError(.readOnly, "read-only file system")
        }
        let moved = inodes.update { table, _, events in
            table.moveLink(
                InodeTable.FilePath(top: top, env: env, key: name),
                to: InodeTable.FilePath(top: top, env: env, key: newName), events: &events)
        }
        guard moved != nil else { throw SecretsError(.notFound, "no '\(name)' to rename") }
    }

    /// A symlink's target (`..data`: "."); nil for anything else.
    public func linkTarget(_ inode: UInt64) -> String? {
        guard let node = inodes.read({ $0.files[inode] }), Self.isLinkName(node.path.key) else { return nil }
        return Self.linkTarget
    }

    private func fileEntry(_ path: InodeTable.FilePath, parent: UInt64) throws(SecretsError) -> (EntryReply, String, [String]?) {
        let answer = try reader.value(path, now: clock())
        let now = CoreClock.wall()
        // One lock hold decides the inode and its snapshot together.
        let attributes = inodes.update { table, digest, events in
            let (inode, node) = table.fileLookup(
                path, parent: parent, bytes: answer.bytes, now: now, digest: digest, events: &events)
            return fileAttributes(inode, node, in: table)
        }
        let reply = EntryReply(
            attributes: attributes, entryTimeout: answer.timeout,
            attributeTimeout: Self.fileAttributeTimeout)
        return (reply, answer.cache, answer.keys)
    }

    // MARK: - The secrets API

    /// The bytes `top/env/key` would read through the mount, by the same rules (see `SecretReader`).
    public func apiRead(top: String, env: String, key: String) throws(SecretsError) -> SecretBytes {
        try reader.apiRead(top: top, env: env, key: key, now: clock())
    }

    /// Every key of an env with its bytes, from one view (see `SecretReader`).
    public func apiList(top: String, env: String) throws(SecretsError) -> [(String, SecretBytes)] {
        try reader.apiList(top: top, env: env, now: clock())
    }

    // MARK: - Attributes, forget, read

    public func attributes(_ inode: UInt64) throws(SecretsError) -> (NodeAttributes, Double) {
        let (isDirectory, file) = inodes.read { table in
            (table.directories[inode] != nil, table.files[inode].map { fileAttributes(inode, $0, in: table) })
        }
        if isDirectory { return (directoryAttributes(inode), directoryTimeout) }
        if let file { return (file, Self.fileAttributeTimeout) }
        throw SecretsError(.notFound, "unknown inode \(inode)")
    }

    private func directoryAttributes(_ inode: UInt64) -> NodeAttributes {
        var owner: AccessPolicy.Attributes
        switch inodes.read({ table in table.directories[inode].map { ($0, table.volumes) } }) {
        case (.top(let top), _)?: owner = policy.directory(top: top, env: nil)
        case (.env(let top, let env), _)?: owner = policy.directory(top: top, env: env)
        case (.volume(let id), let volumes)?:
            owner = policy.directory(top: nil, env: nil)
            if let volume = volumes[id] {
                owner.gid = volume.group ?? owner.gid
                owner.mode = volume.directoryMode
            }
        default: owner = policy.directory(top: nil, env: nil)
        }
        return NodeAttributes(
            inode: inode, isDirectory: true, size: 0, mode: owner.mode, uid: owner.uid, gid: owner.gid,
            modified: mountedAt)
    }

    /// A file's attributes as `table` has them (called with the table locked).
    private func fileAttributes(_ inode: UInt64, _ node: InodeTable.FileNode, in table: InodeTable) -> NodeAttributes {
        var owner = policy.file(top: node.path.top, env: LeasePer.baseEnv(node.path.env), key: node.path.key)
        // A view's files are the pod's: readable in the pod (the view refuses everyone else), or by its fsGroup.
        if !node.path.view.isEmpty, let volume = table.volumes[node.path.view] {
            owner.gid = volume.group ?? owner.gid
            owner.mode = volume.fileMode
        }
        let detached = table.current[node.path] != inode
        let isLink = Self.isLinkName(node.path.key)
        return NodeAttributes(
            inode: inode, isDirectory: false, size: node.size, mode: isLink ? 0o777 : owner.mode, uid: owner.uid,
            gid: owner.gid, modified: node.modified, detached: detached, isSymlink: isLink)
    }

    /// The kernel dropped `count` references; a file inode with none left is released (and its bytes wiped).
    public func forget(_ inode: UInt64, count: UInt64) {
        inodes.update { table, _, events in table.forget(inode, count: count, events: &events) }
    }

    /// The snapshot an inode was created with. A node inherited from an earlier worker is fetched again and served
    /// only when it still holds the same value; otherwise the read fails with ESTALE (one open, one value).
    public func contents(_ inode: UInt64) throws(SecretsError) -> SecretBytes {
        if let node = inodes.read({ $0.files[inode] }) {
            if let bytes = node.bytes { return bytes }
            if Self.isLinkName(node.path.key) { return SecretBytes(Array(Self.linkTarget.utf8)) }
            let bytes = try reader.value(node.path, now: clock()).bytes
            guard inodes.update({ table, digest, _ in table.confirm(inode, bytes: bytes, digest: digest) }) else {
                throw SecretsError(.stale, "'\(node.path.top)/\(node.path.env)/\(node.path.key)' changed since it was opened")
            }
            return bytes
        }
        if isDirectory(inode) { throw SecretsError(.unsupported, "is a directory") }
        throw SecretsError(.notFound, "unknown inode \(inode)")
    }

    public func isFile(_ inode: UInt64) -> Bool { inodes.read { $0.files[inode] != nil } }

    public func isDirectory(_ inode: UInt64) -> Bool { inodes.read { $0.directories[inode] != nil } }

    // MARK: - Directories

    /// While `top`'s store fails (its last call did), its last listing within ttl + `stale_if_error`, served at once
    /// while one background probe asks the store again; nil when the store answers or nothing is kept.
    func staleListing(_ top: String) -> [String]? {
        guard cache.staleIfError > 0, health.isFailing(top),
            let last = listings.fallback(top: top, now: clock(), within: cache.ttl + cache.staleIfError)
        else { return nil }
        health.refreshInBackground("envs \(top)") { [self] in _ = try? probe(top) }
        return last
    }

    public func list(_ inode: UInt64, caller: Caller? = nil) throws(SecretsError) -> [DirectoryEntry] {
        guard let kind = inodes.read({ $0.directories[inode] }) else {
            throw SecretsError(.notFound, "unknown directory inode \(inode)")
        }
        switch kind {
        case .volumes:
            // Volume ids are not listed: a view is reached only through its pod's bind mount.
            return []
        case .volume(let id):
            let volume = try admit(caller, to: id)
            let env = callerEnv(top: volume.top, env: volume.env, caller: caller)
            let view = try reader.views.view(EnvKey(top: volume.top, env: env), now: clock()).view
            let renderedNames = resolver.rendered.names(top: volume.top, env: volume.env)
            let keys = (health.usableNames(
                view.keys.filter { !renderedNames.contains($0) }, top: volume.top, env: volume.env) + renderedNames)
                .filter(volume.shows)
            return inodes.read { table in
                keys.enumerated().map { index, key in
                    let path = InodeTable.FilePath(top: volume.top, env: env, key: key, view: id)
                    return DirectoryEntry(
                        name: key, inode: table.current[path] ?? UInt64.max - UInt64(index), isDirectory: false)
                }
            }
        case .root:
            return inodes.update { table, _, events in
                resolver.topNames.map {
                    DirectoryEntry(name: $0, inode: table.directoryInode(.top($0), events: &events), isDirectory: true)
                }
            }
        case .top(let top):
            let envs: [String]
            do {
                let listed: [String]
                if let last = staleListing(top) { listed = last } else { listed = try probe(top) }
                envs = health.usableNames(listed, top: top, env: nil)
            } catch {
                health.warn(top: top, "listing envs of '\(top)' failed: \(error)")
                // The last listing (this worker's or the previous one's) while the store fails, as for values.
                guard cache.staleIfError > 0,
                    let last = listings.fallback(top: top, now: clock(), within: cache.ttl + cache.staleIfError)
                else { throw error }
                envs = health.usableNames(last, top: top, env: nil)
            }
            let files = resolver.rendered.names(top: top, env: RenderedFiles.allEnvs)
            return inodes.update { table, _, events in
                envs.filter { !files.contains($0) }.map {
                    let inode = table.directoryInode(.env(top: top, env: $0), events: &events)
                    return DirectoryEntry(name: $0, inode: inode, isDirectory: true)
                } + files.enumerated().map { index, name in
                    let inode = table.current[.init(top: top, env: RenderedFiles.allEnvs, key: name)] ?? UInt64.max - UInt64(index)
                    return DirectoryEntry(name: name, inode: inode, isDirectory: false)
                }
            }
        case .env(let top, let directoryEnv):
            // The listing is the cached view's, so names and cached values come from the same moment.
            let env = callerEnv(top: top, env: directoryEnv, caller: caller)
            let view = try reader.views.view(EnvKey(top: top, env: env), now: clock()).view
            let renderedNames = resolver.rendered.names(top: top, env: env)
            let keys = health.usableNames(view.keys.filter { !renderedNames.contains($0) }, top: top, env: env)
                + renderedNames
            return inodes.read { table in
                keys.enumerated().map { index, key in
                    // Names not looked up yet have no inode; readdir needs a non-zero placeholder.
                    let inode = table.current[.init(top: top, env: env, key: key)] ?? UInt64.max - UInt64(index)
                    return DirectoryEntry(name: key, inode: inode, isDirectory: false)
                }
            }
        }
    }

    /// The parent of a directory, for `..`.
    public func parent(of inode: UInt64) -> UInt64 { inodes.read { $0.parent(of: inode) } }

    // MARK: - Changes (health and status: FileSystemCore+Status.swift)

    /// A store reported changes (see `ChangePropagation`).
    public func storeChanged(_ storeName: String, _ changes: [StoreChange] = [.all]) {
        listings.clear()
        self.changes.storeChanged(storeName, changes)
    }
}
