import ArgumentParser
import SecretsCore

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the config and list stores, scopes, envs and key names (never values).",
        discussion: """
            Exit 0 when the config is valid and every store can be read, 1 when a store fails (it is named with \
            the reason), 2 when the config itself is malformed (file:line:column and the problem).
            """
    )

    @OptionGroup var options: ConfigOptions

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel == "info" ? "warning" : options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        print("config \(config.file): ok")
        print("mount \(config.mount.path) (ttl \(config.cache.ttl)s, fresh: \(config.cache.fresh.joined(separator: ", ")))")
        var failed = false
        for name in resolver.topNames {
            guard let top = resolver.tops[name] else { continue }
            if top.isScope {
                let chain = top.chain.enumerated().map { index, element in
                    let place = element.location.map { "\(element.store.name)@\($0)" } ?? element.store.name
                    let level = index < top.levels.count ? top.levels[index] : element.store.name
                    return level == element.store.name ? place : "\(level)=\(place)"
                }
                print("scope \(name): levels \(chain.joined(separator: " -> "))")
            } else {
                print("store \(name) (\(config.store(named: name)?.type ?? "?"))")
            }
            let policy = AccessPolicy(config: config)
            func owner(_ attributes: AccessPolicy.Attributes) -> String {
                "\(attributes.uid):\(attributes.gid) \(String(attributes.mode, radix: 8))"
            }
            do {
                print("  owner and mode of /\(name): \(owner(policy.directory(top: name, env: nil)))")
                for env in try resolver.envs(top: name) {
                    let keys = try resolver.keys(top: name, env: env)
                    let marked = keys.map { key -> String in
                        var notes: [String] = []
                        if resolver.isFresh(top: name, key: key) { notes.append("fresh") }
                        if let allow = policy.allowList(top: name, env: env, key: key) {
                            notes.append("allow " + allow.map(\.description).joined(separator: " "))
                        }
                        if policy.isAudited(top: name, env: env, key: key) { notes.append("audited") }
                        let file = policy.file(top: name, env: env, key: key)
                        let defaultFile = AccessPolicy.Attributes(
                            uid: config.mount.uid, gid: config.mount.gid, mode: config.mount.fileMode)
                        if file != defaultFile { notes.append(owner(file)) }
                        return notes.isEmpty ? key : key + " (" + notes.joined(separator: ", ") + ")"
                    }
                    print("  \(env) [\(owner(policy.directory(top: name, env: env)))]: \(marked.isEmpty ? "-" : marked.joined(separator: ", "))")
                    // Rendered files ([[files]]): their format and the keys each uses now (names only).
                    for fileName in resolver.rendered.names(top: name, env: env) {
                        guard let file = resolver.rendered.file(top: name, env: env, name: fileName) else { continue }
                        let used = file.keys(of: try resolver.view(top: name, env: env))
                        let path = InodeTable.FilePath(top: name, env: env, key: fileName)
                        let fresh = resolver.isFresh(path, in: try resolver.view(top: name, env: env)) ? ", fresh" : ""
                        print("    \(fileName) (\(file.kind)\(fresh), \(owner(policy.file(top: name, env: env, key: fileName)))): \(used.isEmpty ? "no keys" : used.joined(separator: ", "))")
                    }
                }
            } catch {
                failed = true
                print("  FAILED: \(error)")
            }
        }
        if failed { throw ExitCode(ExitStatus.failure.rawValue) }
    }
}
