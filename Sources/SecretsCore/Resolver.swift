/// Layers Dynaconf envs and walks scope chains. It holds no cache: every call reaches the stores.
public final class Resolver: Sendable {
    /// A top-level directory: a store (a chain of one) or a scope.
    public struct Top: Sendable {
        public var name: String
        public var chain: [(store: any SecretStore, location: String?)]
        public var fresh: [Glob]
        public var isScope: Bool
        /// `fresh_max_age` of the store or scope, when it sets one.
        public var freshMaxAge: Double? = nil
        /// The name of each chain element's level (a store's own top: the store's name).
        public var levels: [String] = []
        /// How its env directories look (`layout`).
        public var layout: DirectoryLayout = .plain
    }

    public static let defaultEnv = "default"
    public static let globalEnv = "global"
    /// Dynaconf reads this env after `default` and before the current one.
    public static let dynaconfEnv = "dynaconf"

    public let tops: [String: Top]
    public let topNames: [String]
    private let globalFresh: [Glob]
    private let globalFreshMaxAge: Double

    /// How old a fetched fresh value may be and still serve an open of the top's keys (0: strict).
    public func freshMaxAge(top name: String) -> Double { tops[name]?.freshMaxAge ?? globalFreshMaxAge }

    /// The bound of one read of `top`: the longest `timeout` of the stores it reads (a scope's levels share it).
    public func operationTimeout(top name: String) -> Double? {
        tops[name]?.chain.compactMap { $0.store.operationTimeout }.max()
    }

    /// `[[files]]`: whole-env files rendered at open.
    public let rendered: RenderedFiles

    /// What a file in an env directory holds, from one view: a rendered file's rendering, else the key's bytes
    /// (nil: no such key).
    public func bytes(of path: InodeTable.FilePath, in view: EnvView) throws(SecretsError) -> SecretBytes? {
        if let file = rendered.file(top: path.top, env: path.env, name: path.key) {
            // A file of every env is never compared against one view (change propagation drops it whole).
            // Nor is a template that reads other envs too (it is dropped whenever any env it reads changes).
            guard file.env != nil, file.otherEnvs(top: path.top, env: path.env).isEmpty else { return nil }
            return try rendered.render(file, top: path.top, env: path.env, view: view) { key throws(SecretsError) in
                throw SecretsError(.notFound, "no env '\(key.top)/\(key.env)'")
            }
        }
        return view.value(of: path.key)?.fileBytes()
    }

    /// Whether a read of `path` must fetch now: a fresh key, or a rendered file that uses one (in `view`).
    public func isFresh(_ path: InodeTable.FilePath, in view: EnvView?) -> Bool {
        guard let file = rendered.file(top: path.top, env: path.env, name: path.key) else {
            return isFresh(top: path.top, key: path.key)
        }
        if let template = file.template {
            return template.references.contains { isFresh(top: $0.reference.top ?? path.top, key: $0.reference.key) }
        }
        guard let view else { return false }
        return file.keys(of: view).contains { isFresh(top: path.top, key: $0) }
    }

    public init(config: Config, stores: [String: any SecretStore]) throws(SecretsError) {
        var tops: [String: Top] = [:]
        for storeConfig in config.stores {
            guard let store = stores[storeConfig.name] else {
                throw SecretsError(.invalidConfig, "store '\(storeConfig.name)' was not built")
            }
            tops[storeConfig.name] = Top(
                name: storeConfig.name, chain: [(store, nil)], fresh: storeConfig.fresh.map(Glob.init), isScope: false,
                freshMaxAge: storeConfig.freshMaxAge, levels: [storeConfig.name], layout: storeConfig.layout)
        }
        for scope in config.scopes {
            var chain: [(store: any SecretStore, location: String?)] = []
            var fresh = scope.fresh.map(Glob.init)
            for element in scope.chain {
                guard let store = stores[element.store], let storeConfig = config.store(named: element.store) else {
                    throw SecretsError(.invalidConfig, "scope '\(scope.name)' names unknown store '\(element.store)'")
                }
                chain.append((store, element.path))
                fresh += storeConfig.fresh.map(Glob.init)
            }
            tops[scope.name] = Top(
                name: scope.name, chain: chain, fresh: fresh, isScope: true, freshMaxAge: scope.freshMaxAge,
                levels: scope.chain.map(\.level), layout: scope.layout)
        }
        self.tops = tops
        self.topNames = tops.keys.sorted()
        self.rendered = RenderedFiles(config.files)
        self.globalFresh = config.cache.fresh.map(Glob.init)
        self.globalFreshMaxAge = config.cache.freshMaxAge
    }

    /// The longest a view of `top` may stay cached by its stores' say (nil: no bound; see `cacheBound`).
    public func cacheBound(top name: String) -> Double? {
        tops[name]?.chain.compactMap { $0.store.cacheBound }.min()
    }

    /// How much longer values of `top/env` may be served from a cache (nil: no limit; see `valueLifetime`).
    public func valueLifetime(top name: String, env: String) -> Double? {
        tops[name]?.chain.compactMap { $0.store.valueLifetime(env: env) }.min()
    }

    /// `lease_per` of a store's own top (a scope's levels share their leases).
    public func leasePer(top name: String) -> LeasePer? {
        guard let top = tops[name], !top.isScope else { return nil }
        return top.chain.first?.store.leasePer
    }

    /// Whether `top`'s env directories have the kubelet layout (`..data`).
    public func hasKubernetesLayout(_ top: String) -> Bool { tops[top]?.layout == .kubernetes }

    func top(_ name: String) throws(SecretsError) -> Top {
        guard let top = tops[name] else { throw SecretsError(.notFound, "no store or scope named '\(name)'") }
        return top
    }

    /// The layers of `env`, highest priority first.
    public static func layers(for env: String) -> [String] {
        switch env {
        case defaultEnv: return [defaultEnv]
        case globalEnv: return [globalEnv]
        default: return [globalEnv, env, dynaconfEnv, defaultEnv]
        }
    }

    /// Whether a key is fetched on every open: it matches `[cache] fresh`, its store's or scope's `fresh`, or the
    /// `fresh` of any store in the scope's chain.
    public func isFresh(top name: String, key: String) -> Bool {
        if globalFresh.contains(where: { $0.matches(key) }) { return true }
        return tops[name]?.fresh.contains { $0.matches(key) } ?? false
    }

    /// Every env of the top, plus `default` and `global`, sorted.
    public func envs(top name: String) throws(SecretsError) -> [String] {
        var names: Set<String> = [Self.defaultEnv, Self.globalEnv]
        for element in try top(name).chain {
            for env in try element.store.envs(at: element.location) { names.insert(env.lowercased()) }
        }
        return names.sorted()
    }

    /// The env's canonical (lower-case) name when it exists under the top, else nil.
    public func canonicalEnv(top name: String, env: String) throws(SecretsError) -> String? {
        let folded = env.lowercased()
        if folded == Self.defaultEnv || folded == Self.globalEnv { return folded }
        return try envs(top: name).contains(folded) ? folded : nil
    }

    /// Every key visible under `env`: the union over the chain and the env's layers, sorted.
    public func keys(top name: String, env: String) throws(SecretsError) -> [String] {
        try view(top: name, env: env).keys
    }

    /// One env of a top as fetched at one moment: every layer of every chain element, from one fetch each. Its
    /// listing and its values belong together (the cache keeps and expires them as one).
    public func view(top name: String, env: String) throws(SecretsError) -> EnvView {
        var elements: [[[String: SecretValue]]] = []
        for element in try top(name).chain {
            var layers: [[String: SecretValue]] = []
            for layer in Self.layers(for: env) {
                layers.append(try element.store.fields(of: layer, at: element.location) ?? [:])
            }
            elements.append(layers)
        }
        return EnvView(elements: elements)
    }

    /// The value of `key` under `env`: the first chain element that has it wins; inside it, global over the env
    /// over dynaconf over default. Nil when no element has it.
    public func resolve(top name: String, env: String, key: String) throws(SecretsError) -> SecretValue? {
        let layers = Self.layers(for: env)
        for element in try top(name).chain {
            if let value = try element.store.value(of: key, layers: layers, at: element.location) {
                return value
            }
        }
        return nil
    }
}

extension Resolver {
    /// Where a key's value comes from: the level that serves it and the ones below it that also hold it. Never
    /// the value.
    public struct Source: Sendable, Equatable, CustomStringConvertible {
        public var level: String
        public var store: String
        public var location: String?
        /// The env layer that holds it: `global`, the env itself, `dynaconf` or `default`.
        public var layer: String

        public var description: String {
            "level \(level) (store \(store)\(location.map { ", location \($0)" } ?? ""), env \(layer))"
        }
    }

    /// Every element and layer that holds `key` under `env`, in priority order: the first serves it, the rest are
    /// shadowed. Empty when no level has it.
    public func sources(top name: String, env: String, key: String) throws(SecretsError) -> [Source] {
        let top = try top(name)
        var found: [Source] = []
        for (index, element) in top.chain.enumerated() {
            for layer in Self.layers(for: env) {
                if try element.store.value(of: key, layers: [layer], at: element.location) != nil {
                    let level = index < top.levels.count ? top.levels[index] : element.store.name
                    found.append(
                        Source(level: level, store: element.store.name, location: element.location, layer: layer))
                    break
                }
            }
        }
        return found
    }
}

/// The fields of one env under a top, element by element (chain order), layer by layer (highest priority first).
public struct EnvView: Sendable {
    public let elements: [[[String: SecretValue]]]
    /// Every key, first spelling by priority, sorted.
    public let keys: [String]

    public init(elements: [[[String: SecretValue]]]) {
        self.elements = elements
        var seen: [String: String] = [:]  // lower-cased -> first spelling seen, highest priority first
        for layers in elements {
            for fields in layers {
                for key in fields.keys.sorted() where seen[key.lowercased()] == nil { seen[key.lowercased()] = key }
            }
        }
        keys = seen.values.sorted()
    }

    /// As `Resolver.resolve`: the first element that has the key wins; inside it, the key exactly in the highest
    /// layer that has it, else the key ignoring case layer by layer.
    public func value(of key: String) -> SecretValue? {
        for layers in elements {
            for fields in layers {
                if let exact = fields[key] { return exact }
            }
            for fields in layers {
                if let value = SecretStoreMatch.match(key, in: fields) { return value }
            }
        }
        return nil
    }
}

/// Case-insensitive matching as stores do it, without a store instance.
enum SecretStoreMatch {
    static func match(_ key: String, in fields: [String: SecretValue]) -> SecretValue? {
        if let exact = fields[key] { return exact }
        let folded = key.lowercased()
        for candidate in fields.keys.sorted() where candidate.lowercased() == folded { return fields[candidate] }
        return nil
    }
}
