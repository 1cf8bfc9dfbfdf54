import Deadline
import Logging
import Metrics
import Locking

/// How the core tells the kernel that a name now leads elsewhere. The FUSE bridge implements it; tests record it.
public protocol KernelNotifier: Sendable {
    func invalidateEntry(parent: UInt64, name: String)
    /// The name now leads elsewhere and `child` is gone: the kernel unhashes the name and unlinks the inode, so an
    /// inotify watch on the file gets IN_DELETE_SELF (FUSE_NOTIFY_DELETE). Falls back to `invalidateEntry`.
    func deleteEntry(parent: UInt64, child: UInt64, name: String)
    /// Names whose value changed and directories whose listing changed, relative to the mount point, after the
    /// kernel was told: the bridge may touch them through the mount so that inotify watches on their directories
    /// see the change (`[mount] directory_events`); and the kubelet-layout directories among them, whose `..data`
    /// is swapped after. Returns at once; never given a value.
    func announce(_ paths: [String], swapping directories: [String])
}

extension KernelNotifier {
    public func deleteEntry(parent: UInt64, child: UInt64, name: String) { invalidateEntry(parent: parent, name: name) }
    public func announce(_ paths: [String], swapping directories: [String]) {}
}

/// Change notices from stores: refetch the cached env views that depend on what changed (one fetch per env,
/// whatever the number of keys or notices), detach the names whose value changed and tell the kernel to drop them,
/// so the next open sees the new value without waiting for the ttl. A change in `default`, `dynaconf` or `global`
/// reaches every env of the tops that read that location.
final class ChangePropagation: Sendable {
    struct Stats {
        var notices = 0
        var lastNotice: WallTime?
        /// Since the last summary line: notices, envs refetched, names changed.
        var window = (notices: 0, envs: 0, changed: 0, since: 0.0)
    }

    let stats = Locked(Stats())
    let notifier = Locked<(any KernelNotifier)?>(nil)
    let resolver: Resolver
    let views: EnvViewCache
    let inodes: InodeRegistry
    let health: StoreHealthBoard
    let clock: @Sendable () -> Double
    let logger: Logger

    init(
        resolver: Resolver, views: EnvViewCache, inodes: InodeRegistry, health: StoreHealthBoard,
        clock: @escaping @Sendable () -> Double, logger: Logger
    ) {
        self.resolver = resolver
        self.views = views
        self.inodes = inodes
        self.health = health
        self.clock = clock
        self.logger = logger
    }

    /// Which envs of which tops a change of `storeName` reaches.
    func affects(_ storeName: String, _ changes: [StoreChange]) -> (EnvKey) -> Bool {
        let locationsByTop = Dictionary(
            uniqueKeysWithValues: resolver.tops.values.map { top in
                (top.name, top.chain.filter { $0.store.name == storeName }.map(\.location))
            })
        return { key in
            guard let locations = locationsByTop[key.top], !locations.isEmpty else { return false }
            for change in changes {
                switch change {
                case .all: return true
                case .at(let location, let changedEnv):
                    guard locations.contains(location) else { continue }
                    guard let changedEnv else { return true }
                    if changedEnv == key.env || Resolver.layers(for: key.env).contains(changedEnv) { return true }
                }
            }
            return false
        }
    }

    func storeChanged(_ storeName: String, _ changes: [StoreChange]) {
        let affects = affects(storeName, changes)
        // Views this worker holds, and the envs of names an earlier worker handed out that the kernel may hold.
        let inherited = inodes.read { table in
            Set(table.files.values.filter { $0.inherited && $0.path.env != RenderedFiles.allEnvs }
                .map { EnvKey(top: $0.path.top, env: $0.path.env) })
        }
        let affected = views.keys.union(inherited).filter(affects)
        var stale: [(parent: UInt64, name: String, child: UInt64)] = []
        var announced: Set<String> = []
        for key in affected {
            let before = views.held(key)
            let view: EnvView
            do {
                view = try OperationDeadline.within(resolver.operationTimeout(top: key.top)) { () throws(SecretsError) in
                    try resolver.view(top: key.top, env: key.env)
                }
            } catch {
                health.warn(top: key.top, "refreshing '\(key.top)/\(key.env)' after a change failed: \(error)")
                continue
            }
            views.store(view, for: key, at: clock())
            if let before { announced.formUnion(changedNames(key, before: before, after: view)) }
            stale += inodes.update { table, digest, _ in
                var changed: [(UInt64, String, UInt64)] = []
                for (path, inode) in table.current
                where path.top == key.top && path.env == key.env && !FileSystemCore.isLinkName(path.key) {
                    guard let node = table.files[inode], !resolver.isFresh(path, in: view) else { continue }
                    // A rendered file changes when any key it uses does; one it cannot render any more is detached.
                    if !node.holds((try? resolver.bytes(of: path, in: view)) ?? nil, digest: digest) {
                        changed.append((node.parent, path.key, inode))
                        table.detach(path)
                    }
                }
                return changed
            }
        }
        // A template that reads other envs is dropped whole when any env it reads changes.
        let affectedEnvs = Set(affected)
        if !affectedEnvs.isEmpty, resolver.rendered.readsOtherEnvs {
            stale += inodes.update { table, _, _ in
                var dropped: [(UInt64, String, UInt64)] = []
                for (path, inode) in table.current where path.env != RenderedFiles.allEnvs {
                    guard let file = resolver.rendered.file(top: path.top, env: path.env, name: path.key),
                        file.otherEnvs(top: path.top, env: path.env).contains(where: affectedEnvs.contains),
                        let node = table.files[inode]
                    else { continue }
                    dropped.append((node.parent, path.key, inode))
                    table.detach(path)
                }
                return dropped
            }
        }
        // A file of every env of a top that changed is dropped whole: the next open renders it again.
        let changedTops = Set(affected.map(\.top))
        if !changedTops.isEmpty {
            stale += inodes.update { table, _, _ in
                var dropped: [(UInt64, String, UInt64)] = []
                for (path, inode) in table.current where path.env == RenderedFiles.allEnvs && changedTops.contains(path.top) {
                    guard let node = table.files[inode] else { continue }
                    dropped.append((node.parent, path.key, inode))
                    table.detach(path)
                }
                return dropped
            }
        }
        record(storeName, envs: affected.count, changed: stale.count)
        guard let notifier = notifier.withLock({ $0 }) else { return }
        announced.formUnion(
            inodes.read { table in stale.compactMap { table.files[$0.child].map { Self.mountPath($0.path) } } })
        for entry in stale { notifier.deleteEntry(parent: entry.parent, child: entry.child, name: entry.name) }
        guard !announced.isEmpty else { return }
        // A name of a kubelet-layout top's env directory (top/env/key): that directory's ..data is swapped.
        let swapped = Set(announced.compactMap { path -> String? in
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count >= 2, parts[0] != Substring(CSIVolume.directory),
                resolver.hasKubernetesLayout(String(parts[0])),
                parts.count == 3
                    || (parts.count == 2
                        && resolver.rendered.file(
                            top: String(parts[0]), env: RenderedFiles.allEnvs, name: String(parts[1])) == nil)
            else { return nil }
            return parts[0] + "/" + parts[1]
        })
        notifier.announce(announced.sorted(), swapping: swapped.sorted())
    }

    /// A name's path relative to the mount point.
    static func mountPath(_ path: InodeTable.FilePath) -> String {
        if !path.view.isEmpty { return CSIVolume.directory + "/" + path.view + "/" + path.key }
        if path.env == RenderedFiles.allEnvs { return path.top + "/" + path.key }
        return path.top + "/" + LeasePer.baseEnv(path.env) + "/" + path.key
    }

    /// The names of `key` whose value differs between two views of it (in the tree and in the CSI views that show
    /// them), and the directories whose listing differs. Fresh names are left out: they change without notices.
    func changedNames(_ key: EnvKey, before: EnvView, after: EnvView) -> [String] {
        let volumes = inodes.read { table in table.volumes.values.filter { $0.top == key.top && $0.env == key.env } }
        var names: [String] = []
        let added = Set(after.keys).subtracting(before.keys)
        let removed = Set(before.keys).subtracting(after.keys)
        let rendered = resolver.rendered.names(top: key.top, env: key.env)
        for name in after.keys.filter({ !added.contains($0) && !rendered.contains($0) }) + rendered {
            let path = InodeTable.FilePath(top: key.top, env: key.env, key: name)
            guard !resolver.isFresh(path, in: after), !resolver.isFresh(path, in: before) else { continue }
            let old = (try? resolver.bytes(of: path, in: before)) ?? nil
            let new = (try? resolver.bytes(of: path, in: after)) ?? nil
            guard old != new else { continue }
            names.append(Self.mountPath(path))
            for volume in volumes where volume.shows(name) {
                let shown = InodeTable.FilePath(top: key.top, env: key.env, key: name, view: volume.id)
                names.append(Self.mountPath(shown))
            }
        }
        // A name that came or went: its directory, and the new names themselves.
        if !added.isEmpty || !removed.isEmpty {
            let directory = key.top + "/" + LeasePer.baseEnv(key.env)
            names.append(directory)
            for name in added.sorted() { names.append(directory + "/" + name) }
            for volume in volumes where added.union(removed).contains(where: volume.shows) {
                names.append(CSIVolume.directory + "/" + volume.id)
                for name in added.sorted() where volume.shows(name) {
                    names.append(CSIVolume.directory + "/" + volume.id + "/" + name)
                }
            }
        }
        return names
    }

    /// Counts the notice and logs a summary at most once a minute.
    private func record(_ storeName: String, envs: Int, changed: Int) {
        let now = clock()
        Counter(label: "secretsfs_change_notices_total", dimensions: [("store", storeName)]).increment()
        let noticeTime = CoreClock.wall()
        let summary = stats.withLock { stats -> (notices: Int, envs: Int, changed: Int)? in
            stats.notices += 1
            stats.lastNotice = noticeTime
            stats.window.notices += 1
            stats.window.envs += envs
            stats.window.changed += changed
            guard now - stats.window.since >= 60 else { return nil }
            defer { stats.window = (0, 0, 0, now) }
            return (stats.window.notices, stats.window.envs, stats.window.changed)
        }
        logger.debug(
            "store changed; refetched the envs it affects",
            metadata: ["store": "\(storeName)", "envs": "\(envs)", "changed": "\(changed)"])
        if let summary {
            logger.info(
                "change notices since the last summary",
                metadata: [
                    "store": "\(storeName)", "notices": "\(summary.notices)", "envs_refetched": "\(summary.envs)",
                    "names_changed": "\(summary.changed)",
                ])
        }
    }
}
