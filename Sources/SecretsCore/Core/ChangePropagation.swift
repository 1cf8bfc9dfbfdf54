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
}

extension KernelNotifier {
    public func deleteEntry(parent: UInt64, child: UInt64, name: String) { invalidateEntry(parent: parent, name: name) }
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
        for key in affected {
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
            stale += inodes.update { table, digest, _ in
                var changed: [(UInt64, String, UInt64)] = []
                for (path, inode) in table.current where path.top == key.top && path.env == key.env {
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
        for entry in stale { notifier.deleteEntry(parent: entry.parent, child: entry.child, name: entry.name) }
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
