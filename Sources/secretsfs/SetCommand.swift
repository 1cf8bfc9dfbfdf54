import ArgumentParser
import FileStore
import SecretsCore

struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Add or replace keys in one env of a file store, without an editor.",
        discussion: """
            Example: secretsfs set --config c.toml local production PASSWORD=... PORT=5432
            Values are stored as TOML strings. A bare KEY (no '=') reads its value from standard input, with one \
            trailing newline removed, so the value never appears in the process list or shell history. The \
            store's last file (or --file) is decrypted, changed, re-encrypted and replaced atomically; comments \
            in it are not kept. Works on TOML files; use edit for JSON or YAML.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The file store's name.")
    var store: String

    @Argument(help: "The env (section) to change, e.g. production or default.")
    var env: String

    @Argument(help: "KEY=VALUE pairs, or a bare KEY to read its value from standard input.")
    var assignments: [String]

    @Option(name: .long, help: "Which of the store's files to change (default: the last one).")
    var file: String?

    func run() throws {
        let (fileStore, target) = try Runtime.fileStoreTarget(options, store: store, file: file)
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
