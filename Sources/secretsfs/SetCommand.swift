import ArgumentParser
import FileStore
import SecretsCore

struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Add or replace keys in one env of a store, without an editor.",
        discussion: """
            Example: secretsfs set --config c.toml local production PASSWORD=... PORT=5432
            Values are stored as TOML strings. A bare KEY (no '=') reads its value from standard input, with one \
            trailing newline removed, so the value never appears in the process list or shell history. The \
            file a read of the env looks at first (or --file) is decrypted, changed, re-encrypted and replaced \
            atomically: in a TOML file of envs the [env] table, in a flat file (one env: TOML or dotenv) the whole \
            document; TOML comments are not kept, dotenv lines not named are. SOPS files of any format are \
            changed as sops does; use edit for plain JSON or YAML.
            A Vault or Redis store is written as `write` does (merged into the env's secret or hash). For a scope, \
            --level names the level to write at, whatever its store (file, Vault, Redis); without it the error \
            lists the levels. --delete KEY removes a key at that level, so the next level's value shows.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The store's name (file, Vault or Redis), or a scope's with --level.")
    var store: String

    @Argument(help: "The env (section) to change, e.g. production or default.")
    var env: String

    @Argument(help: "KEY=VALUE pairs, or a bare KEY to read its value from standard input.")
    var assignments: [String] = []

    @Option(name: .long, help: "For a scope: the level to set at (file, Vault or Redis, whatever its store is).")
    var level: String?

    @Flag(name: .long, help: "With --level: parse each value as JSON (objects stay structured).")
    var json = false

    @Option(name: .long, help: "With --level: remove this key at that level (the next level then shows); repeatable.")
    var delete: [String] = []

    @Option(name: .long, help: "Which of the store's files to change (default: the one a read of the env looks at first).")
    var file: String?

    func run() throws {
        let config = try Runtime.loadConfig(options.config)
        let backend = config.stores.first { $0.name == store }.map { $0.type != "file" } ?? false
        if level != nil || backend || config.scopes.contains(where: { $0.name == store }) {
            // At a scope's level, whatever its store, or into a Vault or Redis store: what `write` does.
            let write = try WriteCommand.parse(
                ["--config", options.config, "--log-level", options.logLevel, store, "-e", env]
                    + (level.map { ["--level", $0] } ?? []) + (json ? ["--json"] : [])
                    + delete.flatMap { ["--delete", $0] } + assignments)
            try write.run()
            return
        }
        let (fileStore, target) = try Runtime.fileStoreTarget(options, store: store, file: file, env: env)
        let values = try Assignments.parse(assignments)
        do {
            try fileStore.setKeys(values, env: env, in: target)
            printError("set \(values.map(\.0).joined(separator: ", ")) in [\(env.lowercased())] of \(target)")
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }
}
