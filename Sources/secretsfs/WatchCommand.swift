import ArgumentParser
import Dispatch
import Glibc
import SecretsCore

struct WatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Print one line per change of the given secrets (path, old and new version), never a value.",
        discussion: """
            Each PATH is <store-or-scope>/<env>/<key> (a key or a rendered file) or <store-or-scope>/<env> (every \
            key of the env). Changes are learned from the stores' own notices, as the mount learns them (Redis \
            keyspace notifications, Vault/OpenBao metadata watch, inotify on files); a store with none is read \
            again every [cache] ttl. No mount is needed. Each change prints `PATH OLD NEW` on standard output, \
            where OLD and NEW are versions: 16 hex digits that change with the value and tell nothing about it (a \
            keyed digest whose key lives only in this process, so versions of two runs differ), or `-` for a path \
            that is not there (added, deleted). Runs until SIGINT or SIGTERM. Once the watches are set, a line \
            `watching N paths` goes to standard error. Access rules apply as for `get`: a key this caller may not \
            read exits 1 when named, and is left out of an env it watches. Exit 3 when a named store, scope or env \
            does not exist, 2 for a malformed path or config.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "<store-or-scope>/<env>[/<key>], one or more.")
    var paths: [String]

    func run() throws {
        guard !paths.isEmpty else {
            printError("name at least one <store-or-scope>/<env>[/<key>]")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        let logger = Runtime.bootstrapLogging(level: options.logLevel == "info" ? "warning" : options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let policy = AccessPolicy(config: config)
        let caller = Caller.current
        var targets: [ChangeWatch.Target] = []
        do throws(SecretsError) {
            for path in paths {
                let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2 || parts.count == 3, parts.allSatisfy({ EntryName.problem($0) == nil }) else {
                    throw SecretsError(.invalidConfig, "'\(path)' is not <store-or-scope>/<env>[/<key>]")
                }
                guard resolver.tops[parts[0]] != nil else { throw SecretsError(.notFound, "no store or scope named '\(parts[0])'") }
                guard let env = try resolver.canonicalEnv(top: parts[0], env: parts[1]) else {
                    throw SecretsError(.notFound, "no env '\(parts[1])' in '\(parts[0])'")
                }
                let key = parts.count == 3 ? parts[2] : nil
                if let key, !policy.allows(caller, top: parts[0], env: env, key: key, details: { CallerDetails.read(pid: caller.pid) }) {
                    throw SecretsError(.permissionDenied, "access rule: this caller may not read '\(parts[0])/\(env)/\(key)'")
                }
                targets.append(.init(top: parts[0], env: env, key: key))
            }
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
        let watch = ChangeWatch(
            resolver: resolver, targets: targets,
            allowed: { path in
                policy.allows(caller, top: path.top, env: path.env, key: path.key, details: { CallerDetails.read(pid: caller.pid) })
            },
            onFailure: { message in logger.warning("reading the watched secrets failed; next notice tries again: \(message)") },
            onChange: { changes in
                let lines = changes.map { "\($0.path) \($0.old ?? "-") \($0.new ?? "-")\n" }.joined()
                writeStdout(Array(lines.utf8))
            })
        let pushing = watch.start(config: config, stores: stores, poll: config.cache.ttl)
        let count = watch.current?.count ?? 0
        let polled = Set(targets.flatMap { resolver.tops[$0.top]?.chain.map(\.store.name) ?? [] }).subtracting(pushing)
        printError(
            "watching \(count) paths; notices from \(pushing.isEmpty ? "no store" : pushing.joined(separator: ", "))"
                + (polled.isEmpty ? "" : "; read every \(Int(config.cache.ttl)) s: \(polled.sorted().joined(separator: ", "))"))
        // The stores' notices reach the watch through weak references: it lives as long as this process.
        withExtendedLifetime(watch) {
            while true { pause() }
        }
    }
}
