import ArgumentParser
import Foundation
import SecretsCore

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Set every key of a secrets.json (a flat JSON object) in one env at one level, in one write.",
        discussion: """
            Example: secretsfs import --config c.toml billing production --level service secrets.json
            The file (or - for standard input) must be a JSON object; string values are stored as strings, anything \
            else (numbers, booleans, nested objects and arrays) as structured data that reads back as compact JSON. \
            A file that is not a JSON object, or a key that cannot be a file name, is refused before anything is \
            written, naming the key, never a value. --replace makes the level hold exactly the file's keys. A store \
            name (not a scope) needs no --level.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The store or scope.")
    var store: String

    @Argument(help: "The env to write into.")
    var env: String

    @Option(name: .long, help: "For a scope: the level to write at.")
    var level: String?

    @Flag(name: .long, help: "Remove the level's other keys in that env.")
    var replace = false

    @Argument(help: "The secrets.json file, or - for standard input.")
    var file: String

    func run() throws {
        let logger = Runtime.bootstrapLogging(level: options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let target = try LevelWriter(config: config, name: store, level: level)
        var bytes: [UInt8]
        if file == "-" {
            bytes = readStandardInput()
        } else {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw LevelWriter.fail("cannot read \(file)", .invalidConfig)
            }
            bytes = [UInt8](data)
        }
        defer { wipe(&bytes) }
        guard case .table(let fields)? = SecretValue.parseJSON(bytes) else {
            throw LevelWriter.fail("\(file == "-" ? "standard input" : file) is not a JSON object (a secrets.json maps names to values)", .invalidConfig)
        }
        for key in fields.keys.sorted() {
            if let problem = EntryName.problem(key) {
                throw LevelWriter.fail("a key of \(file) cannot be a file name: it is \(problem); nothing was written", .invalidConfig)
            }
        }
        let values = fields.keys.sorted().compactMap { key in fields[key].map { (key, $0) } }
        do throws(SecretsError) {
            try target.apply(env: env, set: values, remove: [], replace: replace, logger: logger)
            printError("imported \(values.count) keys into \(target.description)/\(env.lowercased())\(replace ? " (replaced)" : "")")
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
    }
}
