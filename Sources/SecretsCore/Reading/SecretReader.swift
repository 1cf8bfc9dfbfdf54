/// Serves values to every front door by the same rules: a fresh key fetched now (sharing the fetch with opens that
/// wait on it), any other from its env's cached view (stale while the store fails, within `stale_if_error`).
public final class SecretReader: Sendable {
    public let resolver: Resolver
    public let views: EnvViewCache
    let fresh: FreshFetcher
    let health: StoreHealthBoard
    let gate: AccessGate

    public init(resolver: Resolver, views: EnvViewCache, fresh: FreshFetcher, health: StoreHealthBoard, gate: AccessGate) {
        self.resolver = resolver
        self.views = views
        self.fresh = fresh
        self.health = health
        self.gate = gate
    }

    /// What reading `path` now gives: the bytes, how long the kernel may keep the name, and how it was served.
    public struct Answer: Sendable {
        public var bytes: SecretBytes
        public var timeout: Double
        public var cache: String
        /// A rendered file: the keys it used.
        public var keys: [String]? = nil
    }

    public func value(_ path: InodeTable.FilePath, now: Double) throws(SecretsError) -> Answer {
        if let file = resolver.rendered.file(top: path.top, env: path.env, name: path.key) {
            return try rendered(file, path, now: now)
        }
        let resolved: SecretValue?
        let timeout: Double
        var cache = "cached"
        if resolver.isFresh(top: path.top, key: path.key) {
            cache = "fresh"
            do {
                resolved = try fresh.value(path)
            } catch where error.code != .notFound {
                health.warn(top: path.top, "reading '\(path.top)/\(path.env)' failed: \(error)")
                throw error
            }
            timeout = 0
        } else {
            let answer = try views.view(EnvKey(top: path.top, env: path.env), now: now)
            resolved = answer.view.value(of: path.key)
            timeout = answer.remaining
            if answer.stale { cache = "stale" }
        }
        guard let resolved else {
            throw SecretsError(.notFound, "no key '\(path.key)' in '\(path.top)/\(path.env)'")
        }
        return Answer(bytes: resolved.fileBytes(), timeout: timeout, cache: cache)
    }

    /// A rendered file from one view of its env: the cached view (stale while the store fails, as for keys), or
    /// one fetched now when any key it uses is fresh (then never stale).
    func rendered(_ file: RenderedFileConfig, _ path: InodeTable.FilePath, now: Double) throws(SecretsError) -> Answer {
        do {
            return try renderedNow(file, path, now: now)
        } catch where error.code == .invalidData || (error.code == .notFound && file.template != nil) {
            health.warn(top: path.top, kind: "render", "cannot render '\(path.top)/\(path.env)/\(path.key)': \(error)")
            throw error
        }
    }

    func renderedNow(_ file: RenderedFileConfig, _ path: InodeTable.FilePath, now: Double) throws(SecretsError) -> Answer {
        if file.env == nil { return try renderedAllEnvs(file, path, now: now) }
        let key = EnvKey(top: path.top, env: path.env)
        let cached = try views.view(key, now: now)
        if resolver.isFresh(path, in: cached.view) {
            do {
                let view = try views.fetch(key)
                let bytes = try resolver.rendered.render(file, top: path.top, env: path.env, view: view) { other throws(SecretsError) in
                    try views.fetch(other)
                }
                return Answer(bytes: bytes, timeout: 0, cache: "fresh", keys: file.keys(of: view))
            } catch where error.code != .notFound && error.code != .invalidData {
                health.warn(top: path.top, "rendering '\(path.top)/\(path.env)/\(path.key)' failed: \(error)")
                throw error
            }
        }
        // A template's other envs from their cached views too: the kernel keeps the file no longer than the
        // soonest of them expires, and it is stale if any of them is.
        var remaining = cached.remaining
        var stale = cached.stale
        let bytes = try resolver.rendered.render(file, top: path.top, env: path.env, view: cached.view) { other throws(SecretsError) in
            let answer = try views.view(other, now: now)
            remaining = min(remaining, answer.remaining)
            stale = stale || answer.stale
            return answer.view
        }
        return Answer(bytes: bytes, timeout: remaining, cache: stale ? "stale" : "cached", keys: file.keys(of: cached.view))
    }

    /// A file of every env (`<top>/<name>`): the top's envs listed now, each env's view as for a key (cached, or
    /// all fetched now when any key it uses is fresh), one section each.
    func renderedAllEnvs(_ file: RenderedFileConfig, _ path: InodeTable.FilePath, now: Double) throws(SecretsError) -> Answer {
        let top = path.top
        let envs = try health.call(top, within: resolver.operationTimeout(top: top)) { () throws(SecretsError) in
            try resolver.envs(top: top)
        }
        var answers: [(env: String, answer: EnvViewCache.Answer)] = []
        for env in envs {
            do {
                answers.append((env, try views.view(EnvKey(top: top, env: env), now: now)))
            } catch where error.code == .notFound {
                continue
            }
        }
        let fresh = answers.contains { entry in file.keys(of: entry.answer.view).contains { resolver.isFresh(top: top, key: $0) } }
        var sections: [(env: String, view: EnvView)] = []
        for (env, answer) in answers {
            sections.append((env, fresh ? try views.fetch(EnvKey(top: top, env: env)) : answer.view))
        }
        let used = Set(sections.flatMap { file.keys(of: $0.view) }).sorted()
        let timeout = fresh ? 0 : answers.map(\.answer.remaining).min() ?? 0
        let cache = fresh ? "fresh" : answers.contains { $0.answer.stale } ? "stale" : "cached"
        return Answer(bytes: try resolver.rendered.render(file, views: sections), timeout: timeout, cache: cache, keys: used)
    }

    /// The bytes `top/env/key` would read through the mount, for the secrets API (counted like an open).
    public func apiRead(top: String, env: String, key: String, now: Double) throws(SecretsError) -> SecretBytes {
        let path = InodeTable.FilePath(top: top, env: env, key: key)
        return try gate.read(path, caller: nil, via: "api", usingKeys: { () throws(SecretsError) in
            let answer = try value(path, now: now)
            return (answer.bytes, answer.cache, answer.keys)
        })
    }

    /// Every key of an env with its bytes, from one view: the cached one, or one fetched now when any of its keys is
    /// fresh (so a bulk answer is one consistent view and fresh keys are never older than the request).
    public func apiList(top: String, env: String, now: Double) throws(SecretsError) -> [(String, SecretBytes)] {
        let key = EnvKey(top: top, env: env)
        var view = try views.view(key, now: now).view
        if view.keys.contains(where: { resolver.isFresh(top: top, key: $0) }) { view = try views.fetch(key) }
        let renderedNames = resolver.rendered.names(top: top, env: env)
        var entries: [(String, SecretBytes)] = view.keys.compactMap { name in
            guard EntryName.isValid(name), !renderedNames.contains(name), let value = view.value(of: name) else { return nil }
            return (name, value.fileBytes())
        }
        // Rendered files are secrets of the env too, from the same view (one that cannot be rendered is left out,
        // with the warning its open would log).
        for name in renderedNames {
            guard let file = resolver.rendered.file(top: top, env: env, name: name) else { continue }
            do {
                entries.append((name, try resolver.rendered.render(file, top: top, env: env, view: view) { other throws(SecretsError) in
                    try views.view(other, now: now).view
                }))
            } catch {
                health.warn(top: top, kind: "render", "cannot render '\(top)/\(env)/\(name)': \(error)")
            }
        }
        return entries
    }
}
