import Dispatch
import Logging
import Metrics
import Synchronization

import Glibc

/// What the kernel is told about a file or directory.
public struct NodeAttributes: Sendable, Equatable {
    public var inode: UInt64
    public var isDirectory: Bool
    public var size: Int
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Seconds and nanoseconds since the epoch; fixed for the life of the inode.
    public var modified: (seconds: Int, nanoseconds: Int)

    public static func == (lhs: NodeAttributes, rhs: NodeAttributes) -> Bool {
        lhs.inode == rhs.inode && lhs.isDirectory == rhs.isDirectory && lhs.size == rhs.size && lhs.mode == rhs.mode
            && lhs.uid == rhs.uid && lhs.gid == rhs.gid && lhs.modified == rhs.modified
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

/// How the core tells the kernel that a name now leads elsewhere. The FUSE bridge implements it; tests record it.
public protocol KernelNotifier: Sendable {
    func invalidateEntry(parent: UInt64, name: String)
}

/// Where a worker reports every node id it issues and every file node the kernel forgets, so that the next worker
/// on the same connection knows them. Called before the reply that hands the id to the kernel.
public protocol NodeJournal: Sendable {
    func record(_ message: HandoverMessage)
}

/// What a worker needs to hand its nodes on: the journal and the keyed digest of a value.
public struct Handover: Sendable {
    public var journal: any NodeJournal
    public var digest: @Sendable (SecretBytes) -> [UInt8]

    public init(journal: any NodeJournal, digest: @escaping @Sendable (SecretBytes) -> [UInt8]) {
        self.journal = journal
        self.digest = digest
    }
}

/// The filesystem without FUSE: inode table, cache policy and resolution. Pure Swift, unit-tested without a mount.
///
/// Every file inode is an immutable snapshot of one value. When a key's value changes, the name is given a *new*
/// inode; handles already open keep reading the old one. So the kernel's page cache is never stale for an inode, one
/// open always reads one value, and the kernel may serve cached files without asking the daemon (no_open, keep_cache).
/// Freshness is decided at lookup: fresh keys get entry timeout 0, so every path walk asks again and refetches;
/// cached keys keep their name for the rest of their ttl.
public final class FileSystemCore: Sendable {
    public static let rootInode: UInt64 = 1
    /// Attributes of an inode never change, so the kernel may keep them long.
    public static let fileAttributeTimeout: Double = 86_400

    public let resolver: Resolver
    let mount: MountConfig
    let cache: CacheConfig
    let clock: @Sendable () -> Double
    let logger: Logger
    let state: Mutex<State>
    let notifier: Mutex<(any KernelNotifier)?>
    let mountedAt: (seconds: Int, nanoseconds: Int)
    /// `[[access]]` and `[audit]`: owners, modes, who may open what, what is recorded.
    public let policy: AccessPolicy
    let audit: AuditLog?
    let callerDetails: @Sendable (Int32) -> CallerDetails

    enum DirectoryKind: Hashable {
        case root
        case top(String)
        case env(top: String, env: String)
    }

    struct FilePath: Hashable {
        var top: String
        var env: String
        var key: String
    }

    struct FileNode {
        var path: FilePath
        var parent: UInt64
        /// Nil for a node inherited from an earlier worker until its value has been fetched again and matched.
        var bytes: SecretBytes?
        var size: Int
        var digest: [UInt8]
        var modified: (seconds: Int, nanoseconds: Int)
        var lookups: UInt64
        /// Issued by an earlier worker: its lookup count is unknown, so the first forget releases it.
        var inherited: Bool

        /// Whether this node holds `value`: by its bytes, or for an inherited node by the digest.
        func holds(_ value: SecretBytes?, digest: (SecretBytes) -> [UInt8]) -> Bool {
            guard let value else { return false }
            if let bytes { return bytes == value }
            return value.count == size && constantTimeEqual(digest(value), self.digest)
        }
    }

    /// One fetch of a fresh key: when it started; completion is signalled through `done`.
    final class Flight: Sendable {
        /// From the same counter as the opens' tickets: a fetch serves the opens whose ticket is lower.
        let ticket: UInt64
        let startedAt: Double
        let done = DispatchGroup()
        init(ticket: UInt64, startedAt: Double) {
            self.ticket = ticket
            self.startedAt = startedAt
            done.enter()
        }
    }

    struct FreshFetches {
        var inFlight: Flight?
        var last: (ticket: UInt64, startedAt: Double, result: Result<SecretValue?, SecretsError>)?
    }

    struct EnvKey: Hashable {
        var top: String
        var env: String
    }

    /// One env's listing and values, fetched together and expiring together.
    struct CachedView {
        var view: EnvView
        var fetchedAt: Double
    }

    struct State {
        var nextInode: UInt64 = 2
        var directories: [UInt64: DirectoryKind] = [1: .root]
        var directoryInodes: [DirectoryKind: UInt64] = [.root: 1]
        var files: [UInt64: FileNode] = [:]
        var current: [FilePath: UInt64] = [:]
        var views: [EnvKey: CachedView] = [:]
        /// Change notices since the last summary line, and what they cost.
        var noticeStats = (notices: 0, envs: 0, changed: 0, since: 0.0)
        /// Fresh keys: the fetch in flight and the last one completed, so opens can share fetches.
        var fresh: [FilePath: FreshFetches] = [:]
        /// Orders opens and fetches of fresh keys (clocks can tie; this cannot).
        var ticket: UInt64 = 0
        /// Per top: did its last backend call answer, since when (wall clock), and the error if not.
        var health: [String: StoreHealth] = [:]
        var notices = 0
        var lastNotice: (seconds: Int, nanoseconds: Int)?
        var workerRestarts: UInt64 = 0
        var lastWarning: [String: Double] = [:]
        /// Store/env pairs already warned about for names that cannot be entries (one warning each).
        var warnedNames: Set<String> = []
        var handover: Handover?

        mutating func allocate() -> UInt64 {
            defer { nextInode += 1 }
            return nextInode
        }

        mutating func directoryInode(_ kind: DirectoryKind) -> UInt64 {
            if let inode = directoryInodes[kind] { return inode }
            let inode = allocate()
            directoryInodes[kind] = inode
            directories[inode] = kind
            handover?.journal.record(.node(kind.record(inode)))
            return inode
        }

        func digest(_ bytes: SecretBytes) -> [UInt8] { handover?.digest(bytes) ?? [] }
    }

    public init(
        config: Config, resolver: Resolver, logger: Logger,
        clock: @escaping @Sendable () -> Double = FileSystemCore.monotonicSeconds, audit: AuditLog? = nil,
        callerDetails: @escaping @Sendable (Int32) -> CallerDetails = CallerDetails.read(pid:)
    ) {
        self.policy = AccessPolicy(config: config)
        self.audit = audit
        self.callerDetails = callerDetails
        self.resolver = resolver
        self.mount = config.mount
        self.cache = config.cache
        self.clock = clock
        self.logger = logger
        self.state = Mutex(State())
        self.notifier = Mutex(nil)
        self.mountedAt = Self.wallClock()
    }

    public func setNotifier(_ notifier: (any KernelNotifier)?) {
        self.notifier.withLock { $0 = notifier }
    }

    /// Takes over the nodes earlier workers issued on this connection and reports every new one to `handover`.
    /// Directory ids stay what they were (a container's bind mount holds one); file nodes come back without their
    /// bytes, which are fetched again when the kernel reads them and served only if they match the digest.
    public func adopt(_ records: [NodeRecord], nextInode: UInt64, handover: Handover) {
        state.withLock { state in
            state.handover = handover
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
                    state.directories[inode] = kind
                    state.directoryInodes[kind] = inode
                case .file(let file):
                    let path = FilePath(top: file.top, env: file.env, key: file.key)
                    state.files[file.inode] = FileNode(
                        path: path, parent: file.parent, bytes: nil, size: file.size, digest: file.digest,
                        modified: (file.modifiedSeconds, file.modifiedNanoseconds), lookups: 1, inherited: true)
                    if (state.current[path] ?? 0) < file.inode { state.current[path] = file.inode }
                }
            }
            state.nextInode = max(state.nextInode, nextInode)
        }
    }

    /// How long the kernel may keep a directory's name and attributes.
    var directoryTimeout: Double { min(cache.ttl, 60) }

    // MARK: - Lookup

    /// `caller` is who walks the path (nil: the daemon itself, no access rules apply).
    public func lookup(parent: UInt64, name: String, caller: Caller? = nil) throws(SecretsError) -> EntryReply {
        guard let kind = state.withLock({ $0.directories[parent] }) else {
            throw SecretsError(.notFound, "unknown directory inode \(parent)")
        }
        switch kind {
        case .root:
            guard resolver.tops[name] != nil else { throw SecretsError(.notFound, "no store or scope '\(name)'") }
            return directoryEntry(.top(name))
        case .top(let top):
            guard EntryName.isValid(name) else { throw SecretsError(.notFound, "no env with such a name") }
            let env: String?
            do {
                env = try resolver.canonicalEnv(top: top, env: name)
            } catch {
                warn(top: top, "listing envs of '\(top)' failed: \(error)")
                // An env already seen stays while its store fails, so that cached keys under it keep being served
                // for stale_if_error; fresh keys still fail on their own.
                let seen = DirectoryKind.env(top: top, env: name.lowercased())
                if cache.staleIfError > 0, let inode = state.withLock({ $0.directoryInodes[seen] }) {
                    let timeout = min(1, directoryTimeout)
                    return EntryReply(
                        attributes: directoryAttributes(inode), entryTimeout: timeout, attributeTimeout: timeout)
                }
                throw error
            }
            guard let env else { throw SecretsError(.notFound, "no env '\(name)' in '\(top)'") }
            return directoryEntry(.env(top: top, env: env))
        case .env(let top, let env):
            guard EntryName.isValid(name) else { throw SecretsError(.notFound, "no key with such a name") }
            return try fileLookup(FilePath(top: top, env: env, key: name), parent: parent, caller: caller)
        }
    }

    /// Leaves out the names that cannot be entries, with one warning per store and env (lengths and positions only).
    private func usableNames(_ names: [String], top: String, env: String?) -> [String] {
        var problems: [String] = []
        let usable = names.filter { name in
            guard let problem = EntryName.problem(name) else { return true }
            problems.append(problem)
            return false
        }
        guard !problems.isEmpty else { return usable }
        let place = env.map { "\(top)/\($0)" } ?? top
        let first = state.withLock { $0.warnedNames.insert(place).inserted }
        if first {
            logger.warning(
                "left out names that cannot be files or folders: \(problems.joined(separator: "; "))",
                metadata: ["store": "\(top)", "env": "\(env ?? "(env names)")", "count": "\(problems.count)"])
        }
        return usable
    }

    private func directoryEntry(_ kind: DirectoryKind) -> EntryReply {
        let inode = state.withLock { $0.directoryInode(kind) }
        return EntryReply(
            attributes: directoryAttributes(inode), entryTimeout: directoryTimeout, attributeTimeout: directoryTimeout)
    }

    /// A file lookup with the access rules and the audit: a caller the path's `allow` list does not name gets EACCES;
    /// paths with such a list or audited get entry timeout 0, so every open is checked and recorded.
    private func fileLookup(_ path: FilePath, parent: UInt64, caller: Caller?) throws(SecretsError) -> EntryReply {
        let audited = policy.isAudited(top: path.top, env: path.env, key: path.key)
        var details: CallerDetails?
        func known(_ caller: Caller) -> CallerDetails {
            if let details { return details }
            let read = callerDetails(caller.pid)
            details = read
            return read
        }
        func record(_ decision: AuditEntry.Decision, _ cache: String?) {
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
                    via: "mount", path: "\(path.top)/\(path.env)/\(path.key)", decision: decision, caller: caller,
                    details: known(caller), cache: cache))
        }
        if let caller, !policy.allows(caller, top: path.top, env: path.env, key: path.key, details: { known(caller) }) {
            record(.denied, nil)
            throw SecretsError(.permissionDenied, "access rule: caller uid \(caller.uid) pid \(caller.pid) may not open '\(path.top)/\(path.env)/\(path.key)'")
        }
        do {
            var (reply, cache) = try fileEntry(path, parent: parent)
            if policy.needsEveryOpen(top: path.top, env: path.env, key: path.key) { reply.entryTimeout = 0 }
            record(.allowed, cache)
            return reply
        } catch {
            record(error.code == .notFound ? .notFound : .error, nil)
            throw error
        }
    }

    private func fileEntry(_ path: FilePath, parent: UInt64) throws(SecretsError) -> (EntryReply, String) {
        let fresh = resolver.isFresh(top: path.top, key: path.key)
        let now = clock()
        let (bytes, entryTimeout, cacheState) = try value(for: path, fresh: fresh, now: now)
        // One lock hold decides the inode and its snapshot together.
        let (inode, node): (UInt64, FileNode) = state.withLock { state in
            // An inherited node is never handed out again: its lookup count is unknown here, so only a node whose
            // every lookup this worker counted can be reused without racing the kernel's forget of the old one.
            if let inode = state.current[path], var node = state.files[inode], !node.inherited,
                node.holds(bytes, digest: state.digest)
            {
                node.lookups += 1
                state.files[inode] = node
                return (inode, node)
            }
            let inode = state.allocate()
            let node = FileNode(
                path: path, parent: parent, bytes: bytes, size: bytes.count, digest: state.digest(bytes),
                modified: Self.wallClock(), lookups: 1, inherited: false)
            state.files[inode] = node
            state.current[path] = inode
            state.handover?.journal.record(.node(node.record(inode)))
            return (inode, node)
        }
        let reply = EntryReply(
            attributes: fileAttributes(inode, node), entryTimeout: entryTimeout,
            attributeTimeout: Self.fileAttributeTimeout)
        return (reply, cacheState)
    }

    /// The bytes of a path and how long the kernel may keep the name: fetched now for fresh keys; for the others
    /// from the env's cached view (listing and values of one fetch) while its ttl runs, and a stale view for a
    /// while when the store fails.
    private func value(for path: FilePath, fresh: Bool, now: Double) throws(SecretsError)
        -> (SecretBytes, Double, String)
    {
        let resolved: SecretValue?
        let timeout: Double
        var cacheState = fresh ? "fresh" : "cached"
        if fresh {
            do {
                resolved = try sharedFetch(path, openedAt: now)
            } catch where error.code != .notFound {
                warn(top: path.top, "reading '\(path.top)/\(path.env)' failed: \(error)")
                throw error
            }
            timeout = 0
        } else {
            let (view, remaining, stale) = try cachedView(EnvKey(top: path.top, env: path.env), now: now)
            resolved = view.value(of: path.key)
            timeout = remaining
            if stale { cacheState = "stale" }
        }
        guard let resolved else {
            throw SecretsError(.notFound, "no key '\(path.key)' in '\(path.top)/\(path.env)'")
        }
        return (resolved.fileBytes(), timeout, cacheState)
    }

    // MARK: - The secrets API

    /// The bytes `top/env/key` would read through the mount, by the same rules: a fresh key fetched now (sharing the
    /// fetch with opens that wait on it), any other from its env's cached view (stale while the store fails). Counted
    /// in `secretsfs_reads_total` like an open.
    public func apiRead(top: String, env: String, key: String) throws(SecretsError) -> SecretBytes {
        let fresh = resolver.isFresh(top: top, key: key)
        do {
            let (bytes, _, cacheState) = try value(for: FilePath(top: top, env: env, key: key), fresh: fresh, now: clock())
            Counter(label: "secretsfs_reads_total", dimensions: [("top", top), ("kind", cacheState)]).increment()
            return bytes
        } catch {
            let kind = error.code == .notFound ? "not_found" : "error"
            Counter(label: "secretsfs_reads_total", dimensions: [("top", top), ("kind", kind)]).increment()
            throw error
        }
    }

    /// Every key of an env with its bytes, from one view: the cached one, or one fetched now when any of its keys is
    /// fresh (so a bulk answer is one consistent view and fresh keys are never older than the request).
    public func apiList(top: String, env: String) throws(SecretsError) -> [(String, SecretBytes)] {
        let key = EnvKey(top: top, env: env)
        var (view, _, _) = try cachedView(key, now: clock())
        if view.keys.contains(where: { resolver.isFresh(top: top, key: $0) }) {
            view = try backend(top) { () throws(SecretsError) in try resolver.view(top: top, env: env) }
        }
        return view.keys.compactMap { name in
            guard EntryName.isValid(name), let value = view.value(of: name) else { return nil }
            return (name, value.fileBytes())
        }
    }

    /// The env's view and how long it stays valid: the cached one while its ttl runs, else fetched now; when the
    /// store fails, the old one for up to `stale_if_error` (with a short timeout, so names are asked again soon).
    /// A fresh key's value for an open that began at `openedAt`: from a fetch that *started* at or after that moment
    /// (concurrent opens share it; a fetch already under way when the open began is waited out, never used), or,
    /// with `fresh_max_age`, from one that started at most that long ago. So a fresh read never returns a value older
    /// than its open (or than the bound), and many readers cost one fetch per round, not one each.
    func sharedFetch(_ path: FilePath, openedAt: Double) throws(SecretsError) -> SecretValue? {
        let maxAge = resolver.freshMaxAge(top: path.top)
        let openTicket = state.withLock { state -> UInt64 in
            state.ticket += 1
            return state.ticket
        }
        while true {
            enum Next {
                case use(Result<SecretValue?, SecretsError>)
                case wait(Flight)
                case fetch(Flight)
            }
            let next: Next = state.withLock { state in
                let entry = state.fresh[path] ?? FreshFetches()
                if let last = entry.last,
                    last.ticket > openTicket || (maxAge > 0 && clock() - last.startedAt <= maxAge)
                {
                    return .use(last.result)
                }
                if let flight = entry.inFlight { return .wait(flight) }
                state.ticket += 1
                let flight = Flight(ticket: state.ticket, startedAt: clock())
                state.fresh[path, default: FreshFetches()].inFlight = flight
                return .fetch(flight)
            }
            switch next {
            case .use(let result):
                return try result.get()
            case .wait(let flight):
                flight.done.wait()
            case .fetch(let flight):
                let result: Result<SecretValue?, SecretsError>
                do {
                    result = .success(
                        try backend(path.top) { () throws(SecretsError) in
                            try resolver.resolve(top: path.top, env: path.env, key: path.key)
                        })
                } catch {
                    result = .failure(error)
                }
                state.withLock { state in
                    state.fresh[path]?.inFlight = nil
                    state.fresh[path]?.last = (flight.ticket, flight.startedAt, result)
                }
                flight.done.leave()
                return try result.get()
            }
        }
    }

    /// Also says whether the view is stale (served past its ttl because the store failed).
    private func cachedView(_ key: EnvKey, now: Double) throws(SecretsError) -> (EnvView, Double, Bool) {
        let cached = state.withLock { $0.views[key] }
        if let cached, now - cached.fetchedAt < cache.ttl {
            return (cached.view, cache.ttl - (now - cached.fetchedAt), false)
        }
        do {
            let view = try backend(key.top) { () throws(SecretsError) in try resolver.view(top: key.top, env: key.env) }
            state.withLock { $0.views[key] = CachedView(view: view, fetchedAt: now) }
            return (view, cache.ttl, false)
        } catch {
            if error.code != .notFound, let cached, now - cached.fetchedAt < cache.ttl + cache.staleIfError {
                warn(top: key.top, "'\(key.top)' failed, serving cached values for up to stale_if_error: \(error)")
                return (cached.view, min(1, cache.ttl), true)
            }
            warn(top: key.top, "reading '\(key.top)/\(key.env)' failed: \(error)")
            throw error
        }
    }

    /// At most one warning a minute per top, so a failing fresh key read in a loop does not flood the log.
    private func warn(top: String, _ message: String) {
        let now = clock()
        let due = state.withLock { state -> Bool in
            if let last = state.lastWarning[top], now - last < 60 { return false }
            state.lastWarning[top] = now
            return true
        }
        if due { logger.warning("\(message)", metadata: ["store": "\(top)"]) }
    }

    // MARK: - Attributes, forget, read

    public func attributes(_ inode: UInt64) throws(SecretsError) -> (NodeAttributes, Double) {
        let found: (DirectoryKind?, FileNode?) = state.withLock { ($0.directories[inode], $0.files[inode]) }
        if found.0 != nil { return (directoryAttributes(inode), directoryTimeout) }
        if let node = found.1 { return (fileAttributes(inode, node), Self.fileAttributeTimeout) }
        throw SecretsError(.notFound, "unknown inode \(inode)")
    }

    private func directoryAttributes(_ inode: UInt64) -> NodeAttributes {
        let owner: AccessPolicy.Attributes
        switch state.withLock({ $0.directories[inode] }) {
        case .top(let top)?: owner = policy.directory(top: top, env: nil)
        case .env(let top, let env)?: owner = policy.directory(top: top, env: env)
        default: owner = policy.directory(top: nil, env: nil)
        }
        return NodeAttributes(
            inode: inode, isDirectory: true, size: 0, mode: owner.mode, uid: owner.uid, gid: owner.gid,
            modified: mountedAt)
    }

    private func fileAttributes(_ inode: UInt64, _ node: FileNode) -> NodeAttributes {
        let owner = policy.file(top: node.path.top, env: node.path.env, key: node.path.key)
        return NodeAttributes(
            inode: inode, isDirectory: false, size: node.size, mode: owner.mode, uid: owner.uid, gid: owner.gid,
            modified: node.modified)
    }

    /// The kernel dropped `count` references; a file inode with none left is released (and its bytes wiped).
    public func forget(_ inode: UInt64, count: UInt64) {
        state.withLock { state in
            guard var node = state.files[inode] else { return }
            node.lookups = node.lookups > count ? node.lookups - count : 0
            // The kernel forgets a node when it evicts it, with its whole count; an inherited node's count is
            // unknown here, so its first forget is taken as that one.
            if node.lookups == 0 || node.inherited {
                state.files.removeValue(forKey: inode)
                if state.current[node.path] == inode { state.current.removeValue(forKey: node.path) }
                state.handover?.journal.record(.removed(inode))
            } else {
                state.files[inode] = node
            }
        }
    }

    /// The snapshot an inode was created with. A node inherited from an earlier worker is fetched again and served
    /// only when it still holds the same value; otherwise the read fails with ESTALE (one open, one value).
    public func contents(_ inode: UInt64) throws(SecretsError) -> SecretBytes {
        if let node = state.withLock({ $0.files[inode] }) {
            if let bytes = node.bytes { return bytes }
            let fresh = resolver.isFresh(top: node.path.top, key: node.path.key)
            let (bytes, _, _) = try value(for: node.path, fresh: fresh, now: clock())
            let matched = state.withLock { state -> Bool in
                guard var current = state.files[inode], current.holds(bytes, digest: state.digest) else { return false }
                current.bytes = bytes
                state.files[inode] = current
                return true
            }
            guard matched else {
                throw SecretsError(.stale, "'\(node.path.top)/\(node.path.env)/\(node.path.key)' changed since it was opened")
            }
            return bytes
        }
        if state.withLock({ $0.directories[inode] }) != nil { throw SecretsError(.unsupported, "is a directory") }
        throw SecretsError(.notFound, "unknown inode \(inode)")
    }

    public func isFile(_ inode: UInt64) -> Bool { state.withLock { $0.files[inode] != nil } }

    public func isDirectory(_ inode: UInt64) -> Bool { state.withLock { $0.directories[inode] != nil } }

    /// The extended attribute that says where a file's value comes from: `level=… store=… env=…` of the level that
    /// serves it now (a backend call; never the value). Nil for directories and unknown inodes.
    public static let sourceAttribute = "user.secretsfs.source"

    public func source(of inode: UInt64) throws(SecretsError) -> String? {
        guard let node = state.withLock({ $0.files[inode] }) else { return nil }
        let sources = try backend(node.path.top) { () throws(SecretsError) in
            try resolver.sources(top: node.path.top, env: node.path.env, key: node.path.key)
        }
        guard let served = sources.first else { throw SecretsError(.notFound, "no level holds the key now") }
        var text = "level=\(served.level) store=\(served.store) env=\(served.layer)"
        if sources.count > 1 { text += " shadowed=" + sources.dropFirst().map(\.level).joined(separator: ",") }
        return text
    }

    /// Number of file inodes the kernel holds (for tests and diagnostics).
    public var liveFileCount: Int { state.withLock { $0.files.count } }

    // MARK: - Directories

    public func list(_ inode: UInt64) throws(SecretsError) -> [DirectoryEntry] {
        guard let kind = state.withLock({ $0.directories[inode] }) else {
            throw SecretsError(.notFound, "unknown directory inode \(inode)")
        }
        switch kind {
        case .root:
            return state.withLock { state in
                resolver.topNames.map {
                    DirectoryEntry(name: $0, inode: state.directoryInode(.top($0)), isDirectory: true)
                }
            }
        case .top(let top):
            let envs: [String]
            do {
                envs = usableNames(try probe(top), top: top, env: nil)
            } catch {
                warn(top: top, "listing envs of '\(top)' failed: \(error)")
                throw error
            }
            return state.withLock { state in
                envs.map {
                    DirectoryEntry(
                        name: $0, inode: state.directoryInode(.env(top: top, env: $0)), isDirectory: true)
                }
            }
        case .env(let top, let env):
            // The listing is the cached view's, so names and cached values come from the same moment.
            let keys = usableNames(try cachedView(EnvKey(top: top, env: env), now: clock()).0.keys, top: top, env: env)
            return state.withLock { state in
                keys.enumerated().map { index, key in
                    // Names not looked up yet have no inode; readdir needs a non-zero placeholder.
                    let inode = state.current[FilePath(top: top, env: env, key: key)] ?? UInt64.max - UInt64(index)
                    return DirectoryEntry(name: key, inode: inode, isDirectory: false)
                }
            }
        }
    }

    /// The parent of a directory, for `..`.
    public func parent(of inode: UInt64) -> UInt64 {
        state.withLock { state in
            switch state.directories[inode] {
            case .env(let top, _)?: return state.directoryInodes[.top(top)] ?? Self.rootInode
            default: return Self.rootInode
            }
        }
    }

    // MARK: - Change propagation

    /// A store reported changes: refetch the cached env views that depend on what changed (one fetch per env,
    /// whatever the number of keys or notices), and tell the kernel to drop the names whose value changed, so the
    /// next open sees the new value without waiting for the ttl. A change in `default`, `dynaconf` or `global`
    /// reaches every env of the tops that read that location.
    public func storeChanged(_ storeName: String, _ changes: [StoreChange] = [.all]) {
        let affectedTops = resolver.tops.values.compactMap { top -> (String, [String?])? in
            let locations = top.chain.filter { $0.store.name == storeName }.map(\.location)
            return locations.isEmpty ? nil : (top.name, locations)
        }
        func affects(top: String, env: String) -> Bool {
            guard let locations = affectedTops.first(where: { $0.0 == top })?.1 else { return false }
            for change in changes {
                switch change {
                case .all: return true
                case .at(let location, let changedEnv):
                    guard locations.contains(location) else { continue }
                    guard let changedEnv else { return true }
                    if changedEnv == env || Resolver.layers(for: env).contains(changedEnv) { return true }
                }
            }
            return false
        }
        // Views this worker holds, and the envs of names an earlier worker handed out that the kernel may hold.
        let candidates = state.withLock { state in
            Set(state.views.keys).union(
                state.files.values.filter(\.inherited).map { EnvKey(top: $0.path.top, env: $0.path.env) })
        }
        let affected = candidates.filter { affects(top: $0.top, env: $0.env) }
        var stale: [(parent: UInt64, name: String)] = []
        for key in affected {
            let view: EnvView
            do {
                view = try resolver.view(top: key.top, env: key.env)
            } catch {
                warn(top: key.top, "refreshing '\(key.top)/\(key.env)' after a change failed: \(error)")
                continue
            }
            let now = clock()
            state.withLock { state in
                state.views[key] = CachedView(view: view, fetchedAt: now)
                for (path, inode) in state.current where path.top == key.top && path.env == key.env {
                    guard let node = state.files[inode], !resolver.isFresh(top: path.top, key: path.key) else {
                        continue
                    }
                    if !node.holds(view.value(of: path.key)?.fileBytes(), digest: state.digest) {
                        stale.append((node.parent, path.key))
                        // The name leads elsewhere now; the node stays for the handles that hold it.
                        state.current.removeValue(forKey: path)
                    }
                }
            }
        }
        let now = clock()
        Counter(label: "secretsfs_change_notices_total", dimensions: [("store", storeName)]).increment()
        let noticeTime = Self.wallClock()
        let summary = state.withLock { state -> (notices: Int, envs: Int, changed: Int)? in
            state.notices += 1
            state.lastNotice = noticeTime
            state.noticeStats.notices += 1
            state.noticeStats.envs += affected.count
            state.noticeStats.changed += stale.count
            guard now - state.noticeStats.since >= 60 else { return nil }
            defer { state.noticeStats = (0, 0, 0, now) }
            return (state.noticeStats.notices, state.noticeStats.envs, state.noticeStats.changed)
        }
        logger.debug(
            "store changed; refetched the envs it affects",
            metadata: ["store": "\(storeName)", "envs": "\(affected.count)", "changed": "\(stale.count)"])
        if let summary {
            logger.info(
                "change notices since the last summary",
                metadata: [
                    "store": "\(storeName)", "notices": "\(summary.notices)", "envs_refetched": "\(summary.envs)",
                    "names_changed": "\(summary.changed)",
                ])
        }
        guard let notifier = notifier.withLock({ $0 }) else { return }
        for entry in stale {
            notifier.invalidateEntry(parent: entry.parent, name: entry.name)
        }
    }

    // MARK: - Health and metrics

    /// Times a backend call for the top, counts its errors and notes whether the store answered (not found is an
    /// answer). Metric labels are top names and kinds from the config, never anything from a value.
    func backend<T>(_ top: String, _ body: () throws(SecretsError) -> T) throws(SecretsError) -> T {
        let started = Self.monotonicSeconds()
        let result: Result<T, SecretsError>
        do {
            result = .success(try body())
        } catch {
            result = .failure(error)
        }
        Timer(label: "secretsfs_backend_seconds", dimensions: [("top", top)])
            .recordNanoseconds(Int64((Self.monotonicSeconds() - started) * 1e9))
        var failure: SecretsError?
        if case .failure(let error) = result, error.code != .notFound { failure = error }
        if failure != nil { Counter(label: "secretsfs_backend_errors_total", dimensions: [("top", top)]).increment() }
        let now = Self.wallClock()
        state.withLock { state in
            let ok = failure == nil
            if state.health[top]?.ok != ok {
                state.health[top] = StoreHealth(ok: ok, since: now, error: failure.map { "\($0)" })
            } else if let failure {
                state.health[top]?.error = "\(failure)"
            }
        }
        return try result.get()
    }

    /// Asks the top's stores for their envs once, so health is known before the first read.
    public func probe(_ top: String) throws(SecretsError) -> [String] {
        try backend(top) { () throws(SecretsError) in try resolver.envs(top: top) }
    }

    /// How many workers died and were replaced on this mount before this one (from the supervisor).
    public func setWorkerRestarts(_ count: UInt64) { state.withLock { $0.workerRestarts = count } }

    /// Every top's health, counts for /status and gauges for /metrics.
    public func status() -> CoreStatus {
        let snapshot = state.withLock { state in
            (state.health, state.files.count, state.views.count, state.notices, state.lastNotice, state.workerRestarts)
        }
        Gauge(label: "secretsfs_live_inodes").record(snapshot.1)
        Gauge(label: "secretsfs_cached_envs").record(snapshot.2)
        Gauge(label: "secretsfs_worker_restarts").record(Int64(snapshot.5))
        return CoreStatus(
            stores: resolver.topNames.map { name in
                (name, snapshot.0[name] ?? StoreHealth(ok: true, since: mountedAt, error: nil))
            }, liveInodes: snapshot.1, cachedEnvs: snapshot.2, notices: snapshot.3, lastNotice: snapshot.4,
            workerRestarts: snapshot.5)
    }

    // MARK: - Clocks

    public static func currentWallClock() -> (seconds: Int, nanoseconds: Int) { wallClock() }

    public static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    static func wallClock() -> (seconds: Int, nanoseconds: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return (Int(now.tv_sec), Int(now.tv_nsec))
    }
}

extension FileSystemCore.DirectoryKind {
    func record(_ inode: UInt64) -> NodeRecord {
        switch self {
        case .root: return .directory(inode: inode, top: nil, env: nil)
        case .top(let top): return .directory(inode: inode, top: top, env: nil)
        case .env(let top, let env): return .directory(inode: inode, top: top, env: env)
        }
    }
}

extension FileSystemCore.FileNode {
    func record(_ inode: UInt64) -> NodeRecord {
        .file(
            FileRecord(
                inode: inode, parent: parent, top: path.top, env: path.env, key: path.key, size: size,
                modifiedSeconds: modified.seconds, modifiedNanoseconds: modified.nanoseconds, digest: digest))
    }
}

/// Compares two digests in time independent of where they differ.
func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
}

/// Whether a top's last backend call was answered, since when (wall clock), and what failed.
public struct StoreHealth: Sendable {
    public var ok: Bool
    public var since: (seconds: Int, nanoseconds: Int)
    public var error: String?
}

/// What /status shows and /healthz decides from.
public struct CoreStatus: Sendable {
    public var stores: [(name: String, health: StoreHealth)]
    public var liveInodes: Int
    public var cachedEnvs: Int
    public var notices: Int
    public var lastNotice: (seconds: Int, nanoseconds: Int)?
    public var workerRestarts: UInt64

    public var failing: [String] { stores.filter { !$0.health.ok }.map(\.name) }
}
