import Deadline
import Dispatch
import Glibc
import Locking

/// Follows secrets for `run --watch` and `secretsfs watch`, without a mount: learns that something may have changed
/// from the stores' own notices (push, watch or inotify where a store has them; one re-read every `poll` seconds, the
/// cache ttl, where it has none), then reads its targets again and reports each whose version changed.
///
/// A version is a keyed digest of the bytes (SipHash-1-3 under this process's random seed, 64 bits): it changes with
/// the value and tells nothing about it, not even to someone who guesses values (the key is never shown).
public final class ChangeWatch: Sendable {
    /// A key or rendered file (`key` set), or every key of an env.
    public struct Target: Hashable, Sendable, CustomStringConvertible {
        public var top: String
        public var env: String
        public var key: String?

        public init(top: String, env: String, key: String?) {
            self.top = top
            self.env = env
            self.key = key
        }

        public var description: String { [top, env, key].compactMap { $0 }.joined(separator: "/") }
    }

    /// A path whose version changed: nil for a path that is not there (before or after).
    public struct Change: Sendable, Equatable {
        public var path: String
        public var old: String?
        public var new: String?
    }

    let resolver: Resolver
    let targets: [Target]
    let allowed: @Sendable (InodeTable.FilePath) -> Bool
    let onChange: @Sendable ([Change]) -> Void
    let onFailure: @Sendable (String) -> Void
    /// The version of every path last read; checks run one at a time under this lock.
    let versions = Locked<[String: String]?>(nil)
    let stopped = Locked(false)

    /// `allowed`: whether this caller may follow a path (the access rules; a path it may not is left out of an env
    /// and never reported). `onFailure`: a read that failed (the versions stay; a later notice tries again).
    public init(
        resolver: Resolver, targets: [Target], allowed: @escaping @Sendable (InodeTable.FilePath) -> Bool = { _ in true },
        onFailure: @escaping @Sendable (String) -> Void = { _ in }, onChange: @escaping @Sendable ([Change]) -> Void
    ) {
        self.resolver = resolver
        self.targets = targets
        self.allowed = allowed
        self.onFailure = onFailure
        self.onChange = onChange
    }

    public static func version(of bytes: SecretBytes) -> String {
        var hasher = Hasher()
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
        hasher.combine(bytes.count)
        let value = UInt64(bitPattern: Int64(hasher.finalize()))
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }

    /// Every path the targets stand for now, with its version (a failing store throws).
    public func read() throws(SecretsError) -> [String: String] {
        var out: [String: String] = [:]
        var views: [EnvKey: EnvView] = [:]
        func view(_ key: EnvKey) throws(SecretsError) -> EnvView {
            if let known = views[key] { return known }
            let fetched = try OperationDeadline.within(resolver.operationTimeout(top: key.top)) { () throws(SecretsError) in
                try resolver.view(top: key.top, env: key.env)
            }
            views[key] = fetched
            return fetched
        }
        for target in targets {
            let envView: EnvView
            do {
                envView = try view(EnvKey(top: target.top, env: target.env))
            } catch where error.code == .notFound {
                continue
            }
            // An env: its keys and its rendered files, as its directory lists them.
            let rendered = resolver.rendered.names(top: target.top, env: target.env)
            let keys = target.key.map { [$0] } ?? (envView.keys.filter { EntryName.isValid($0) && !rendered.contains($0) } + rendered)
            for key in keys {
                let path = InodeTable.FilePath(top: target.top, env: target.env, key: key)
                guard allowed(path) else { continue }
                let bytes: SecretBytes?
                if let file = resolver.rendered.file(top: target.top, env: target.env, name: key) {
                    do {
                        bytes = try resolver.rendered.render(file, top: target.top, env: target.env, view: envView) {
                            other throws(SecretsError) in try view(other)
                        }
                    } catch where error.code == .notFound {
                        bytes = nil
                    }
                } else {
                    bytes = envView.value(of: key)?.fileBytes()
                }
                if let bytes { out["\(target.top)/\(target.env)/\(key)"] = Self.version(of: bytes) }
            }
        }
        return out
    }

    /// Reads the targets now and reports what changed since the last check (nothing on the first one).
    @discardableResult
    public func check() -> [Change] {
        let changes = versions.withLock { known -> [Change] in
            let now: [String: String]
            do {
                now = try read()
            } catch {
                onFailure("\(error)")
                return []
            }
            defer { known = now }
            guard let before = known else { return [] }
            return Set(before.keys).union(now.keys).sorted().compactMap { path in
                before[path] == now[path] ? nil : Change(path: path, old: before[path], new: now[path])
            }
        }
        if !changes.isEmpty, !stopped.withLock({ $0 }) { onChange(changes) }
        return changes
    }

    /// The versions as last read (nil before the first check).
    public var current: [String: String]? { versions.withLock { $0 } }

    /// Takes the first versions, then starts each store's notices (a store without them is read again every `poll`
    /// seconds). Returns the names of the stores that push.
    @discardableResult
    public func start(config: Config, stores: [String: any SecretStore], poll: Double) -> [String] {
        check()
        var used: Set<String> = []
        for target in targets { for level in resolver.tops[target.top]?.chain ?? [] { used.insert(level.store.name) } }
        var pushing: [String] = []
        var polled = false
        for name in used.sorted() {
            guard let store = stores[name] else { continue }
            if store.watch(locations: config.scopeLocations(of: name), { [weak self] _ in self?.check() }) {
                pushing.append(name)
            } else {
                polled = true
            }
        }
        if polled {
            let interval = max(poll, 1)
            // A queue of its own: the loop sleeps between reads, never holding a shared worker.
            DispatchQueue(label: "secretsfs.change-watch.poll").async { [weak self] in
                while let watch = self, !watch.stopped.withLock({ $0 }) {
                    usleep(useconds_t(interval * 1_000_000))
                    watch.check()
                }
            }
        }
        return pushing
    }

    /// No more reports (the stores' own `close` ends their watches).
    public func stop() { stopped.withLock { $0 = true } }
}
