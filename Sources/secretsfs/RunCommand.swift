import ArgumentParser
import CLinux
import Glibc
import Logging
import SecretsCore

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command with secrets in its environment (no mount needed).",
        discussion: """
            Resolves every --secret NAME=<store-or-scope>/<env>/<key> (and, with --all <store-or-scope>/<env>, every \
            key of that env as a variable, prefixed with --prefix; with --env-file <store-or-scope>/<env>/<file>, \
            every key of that rendered dotenv file) from the stores, as `get` does, then replaces \
            itself with COMMAND (execvp: no shell, PATH is searched) with those variables added to its environment, \
            after --env NAME=VALUE ones. All or nothing: a missing secret exits 3 naming it, before the command \
            starts. Variable names must be POSIX names (letters, digits, _, not starting with a digit); references \
            follow the mount's name rule. Nothing is printed and no value is put in argv. The exit status is the \
            command's (127 when it cannot be run). Audited paths are recorded with via "run".

            With --watch, run stays the command's parent instead and follows every secret it passed, from the \
            stores' own notices (Redis keyspace notifications, Vault/OpenBao watch, inotify on files; a store with \
            none is read again every [cache] ttl). Changes within --debounce of the first are one change. Then, \
            with --on-change restart (the default), the command gets --stop-signal (TERM), --grace (10s) to exit, \
            then SIGKILL, and starts again with the new values; with signal:NAME it gets that signal and keeps \
            running (for programs that re-read files); with exit it is stopped the same way and run exits 75. A \
            change that leaves a secret missing or failing keeps the running command (logged; the next change \
            tries again). When the command exits on its own, run exits with its status (128+N for signal N); \
            SIGTERM, SIGINT and SIGQUIT sent to run are passed on and run exits with the command's status; SIGHUP \
            is passed on only. Messages name variables, never values.

            Prefer the mount when a value may change while the program runs (files are read when opened; an \
            environment is fixed at start) or when many programs share secrets; prefer `run` for one-shot jobs, \
            programs that only read environment variables, and hosts without FUSE.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Option(name: .customLong("secret"), help: "NAME=<store-or-scope>/<env>/<key>; repeatable.")
    var secrets: [String] = []

    @Option(name: .customLong("env"), help: "NAME=VALUE, a plain variable; repeatable.")
    var plain: [String] = []

    @Option(name: .long, help: "Every key of <store-or-scope>/<env> as a variable of the same name.")
    var all: String?

    @Option(name: .long, help: "With --all: put this before every variable name.")
    var prefix: String = ""

    @Option(
        name: .customLong("env-file"),
        help: "<store-or-scope>/<env>/<file>: a rendered dotenv file ([[files]] format = \"dotenv\"), its keys as variables; repeatable.")
    var envFiles: [String] = []

    @Flag(name: .long, help: "Stay the command's parent and act when any secret it got changes (see --on-change).")
    var watch = false

    @Option(
        name: .customLong("on-change"),
        help: "With --watch: restart (stop signal, grace, SIGKILL, start with the new values), signal:NAME (send NAME, keep the process) or exit (stop it, exit 75).")
    var onChange: String = "restart"

    @Option(name: .customLong("stop-signal"), help: "With --watch: the signal that asks the command to stop (TERM, INT, QUIT, ...).")
    var stopSignal: String = "TERM"

    @Option(name: .long, help: "With --watch: how long the command may take to stop before SIGKILL (10s, 500ms).")
    var grace: String = "10s"

    @Option(name: .long, help: "With --watch: changes within this long of the first are handled as one (1s, 0).")
    var debounce: String = "1s"

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    /// A duration option (`10s`, `500ms`, `0`).
    static func seconds(_ text: String, option: String) throws -> Double {
        guard let value = ConfigSection.parseDuration(text) else {
            throw fail("--\(option) takes a duration such as 10s, 500ms or 0, not '\(text)'", .invalidConfig)
        }
        return value
    }

    static func isVariableName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic)
        else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
    }

    static func fail(_ message: String, _ status: ExitStatus) -> ExitCode {
        printError(message)
        return ExitCode(status.rawValue)
    }

    /// `<top>/<env>/<key>` or `<top>/<env>`, each part a usable entry name.
    static func reference(_ text: String, parts count: Int) throws -> [String] {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == count else {
            throw fail("'\(text)' is not <store-or-scope>/<env>\(count == 3 ? "/<key>" : "")", .invalidConfig)
        }
        for part in parts {
            if let problem = EntryName.problem(part) {
                throw fail("'\(text)' cannot name a secret: one part is \(problem)", .invalidConfig)
            }
        }
        return parts
    }

    func run() throws {
        guard !command.isEmpty else { throw Self.fail("no command: give it after --", .invalidConfig) }
        // Check every name before reading any secret.
        var wanted: [(name: String, parts: [String])] = []
        for assignment in secrets {
            guard let equals = assignment.firstIndex(of: "=") else {
                throw Self.fail("--secret takes NAME=<store-or-scope>/<env>/<key>", .invalidConfig)
            }
            let name = String(assignment[..<equals])
            guard Self.isVariableName(name) else {
                throw Self.fail("'\(name)' is not a variable name (letters, digits, _, not starting with a digit)", .invalidConfig)
            }
            wanted.append((name, try Self.reference(String(assignment[assignment.index(after: equals)...]), parts: 3)))
        }
        var environment: [(String, [UInt8])] = []
        for assignment in plain {
            guard let equals = assignment.firstIndex(of: "="), Self.isVariableName(String(assignment[..<equals])) else {
                throw Self.fail("--env takes NAME=VALUE with a POSIX variable name", .invalidConfig)
            }
            environment.append((String(assignment[..<equals]), Array(assignment[assignment.index(after: equals)...].utf8)))
        }
        let allParts = try all.map { try Self.reference($0, parts: 2) }
        let fileParts = try envFiles.map { try Self.reference($0, parts: 3) }

        var watched: WatchedRun.OnChange?
        var timings = (stop: SIGTERM, grace: 10.0, debounce: 1.0)
        if watch {
            guard let parsed = WatchedRun.OnChange(onChange) else {
                throw Self.fail("--on-change takes restart, signal:NAME (signal:HUP) or exit, not '\(onChange)'", .invalidConfig)
            }
            guard let signal = WatchedRun.signalNumber(stopSignal) else {
                throw Self.fail("--stop-signal takes a signal name or number (TERM, INT, 15), not '\(stopSignal)'", .invalidConfig)
            }
            watched = parsed
            timings = (signal, try Self.seconds(grace, option: "grace"), try Self.seconds(debounce, option: "debounce"))
            // Before any store starts a thread: the signals run hands to the command are taken by one thread.
            WatchedRun.blockForwardedSignals()
        }

        let logger = Runtime.bootstrapLogging(level: options.logLevel == "info" ? "warning" : options.logLevel)
        let config = try Runtime.loadConfig(options.config)
        let stores = try Runtime.buildStores(config, logger: logger)
        let resolver = try Runtime.resolver(config, stores: stores)
        let reader = try AuditedReader(config: config, resolver: resolver, logger: logger, via: "run")
        let prefix = self.prefix
        // Every value the command gets, read now: all or nothing.
        let resolve = { () throws(SecretsError) -> [(String, SecretBytes)] in
        var values: [(String, SecretBytes)] = []
            if let allParts {
                let env = try reader.env(top: allParts[0], env: allParts[1])
                for key in try resolver.keys(top: allParts[0], env: env) {
                    let name = prefix + key
                    guard Self.isVariableName(name) else {
                        throw SecretsError(.invalidArgument, "key '\(key)' of \(allParts[0])/\(env) is not usable as a variable name '\(name)'")
                    }
                    values.append((name, try reader.read(top: allParts[0], env: env, key: key)))
                }
            }
            for parts in fileParts {
                let env = try reader.env(top: parts[0], env: parts[1])
                for (key, bytes) in try reader.renderedEntries(top: parts[0], env: env, name: parts[2]) {
                    guard Self.isVariableName(key) else {
                        throw SecretsError(.invalidArgument, "key '\(key)' of \(parts.joined(separator: "/")) is not usable as a variable name")
                    }
                    values.append((key, bytes))
                }
            }
            for (name, parts) in wanted {
                let env = try reader.env(top: parts[0], env: parts[1])
                values.append((name, try reader.read(top: parts[0], env: env, key: parts[2])))
            }
            for (name, bytes) in values where bytes.withUnsafeBytes({ $0.contains(0) }) {
                throw SecretsError(.invalidConfig, "the value for \(name) holds a NUL byte, which an environment variable cannot carry")
            }
            return values
        }
        let values: [(String, SecretBytes)]
        do {
            values = try resolve()
        } catch {
            printError(error.description)
            throw Runtime.exitCode(for: error)
        }
        if let watched {
            let run = WatchedRun(
                command: command, onChange: watched, stopSignal: timings.stop, grace: timings.grace,
                debounce: timings.debounce, resolve: resolve,
                environment: { values in Self.environmentBlock(plain: environment, values: values) })
            let status = run.run(values) { events in
                let targets = wanted.map { ChangeWatch.Target(top: $0.parts[0], env: $0.parts[1], key: $0.parts[2]) }
                    + fileParts.map { ChangeWatch.Target(top: $0[0], env: $0[1], key: $0[2]) }
                    + (allParts.map { [ChangeWatch.Target(top: $0[0], env: $0[1], key: nil)] } ?? [])
                let canonical = targets.map { target in
                    var target = target
                    target.env = (try? resolver.canonicalEnv(top: target.top, env: target.env) ?? target.env) ?? target.env
                    return target
                }
                let watch = ChangeWatch(resolver: resolver, targets: canonical) { _ in events.post(.changed) }
                watch.start(config: config, stores: stores, poll: config.cache.ttl)
                return watch
            }
            throw ExitCode(status)
        }
        stores.values.forEach { $0.close() }

        var cEnvironment = Self.environmentBlock(plain: environment, values: values)
        let cArguments = command.map { strdup($0) } + [nil]
        secretsfs_execvpe(command[0], cArguments, cEnvironment)
        let failure = errno
        // Not reached when the command started: wipe what was copied.
        Self.release(&cEnvironment)
        throw Self.fail("cannot run \(command[0]): \(FileIO.errnoText(failure))", failure == ENOENT ? .commandNotFound : .commandNotExecutable)
    }

    /// The command's environment: ours, then --env, then the secrets (later ones win), as C strings.
    static func environmentBlock(plain environment: [(String, [UInt8])], values: [(String, SecretBytes)])
        -> [UnsafeMutablePointer<CChar>?]
    {
        var names: [String] = []
        var entries: [String: [UInt8]] = [:]
        func set(_ name: String, _ value: [UInt8]) {
            if entries[name] == nil { names.append(name) }
            entries[name] = value
        }
        var cursor = Glibc.environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") { set(String(text[..<equals]), Array(text[text.index(after: equals)...].utf8)) }
            cursor += 1
        }
        for (name, value) in environment { set(name, value) }
        for (name, bytes) in values { set(name, bytes.copyBytes()) }
        var cEnvironment: [UnsafeMutablePointer<CChar>?] = names.map { name in
            let bytes = Array(name.utf8) + [UInt8(ascii: "=")] + (entries[name] ?? []) + [0]
            let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count)
            for (index, byte) in bytes.enumerated() { pointer[index] = CChar(bitPattern: byte) }
            return pointer
        }
        cEnvironment.append(nil)
        return cEnvironment
    }

    /// Wipes and frees an environment block.
    static func release(_ block: inout [UnsafeMutablePointer<CChar>?]) {
        for pointer in block.compactMap({ $0 }) {
            explicit_bzero(pointer, strlen(pointer))
            pointer.deallocate()
        }
        block = []
    }
}

/// Reads secrets for `get` and `run` through the mount's access and audit path (`AccessGate`): `allow` lists apply
/// to this process's caller, audited paths are recorded with `via`. Values are fetched now (no cache in a one-shot
/// command).
struct AuditedReader {
    let resolver: Resolver
    let gate: AccessGate
    let via: String

    init(config: Config, resolver: Resolver, logger: Logger, via: String) throws {
        self.resolver = resolver
        let audit: AuditLog?
        do {
            audit = config.audit.enabled ? try AuditLog(config: config.audit, logger: logger) : nil
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        gate = AccessGate(policy: AccessPolicy(config: config), audit: audit)
        self.via = via
    }

    func env(top: String, env: String) throws(SecretsError) -> String {
        guard resolver.tops[top] != nil else { throw SecretsError(.notFound, "no store or scope named '\(top)'") }
        guard let canonical = try resolver.canonicalEnv(top: top, env: env) else {
            throw SecretsError(.notFound, "no env '\(env)' in '\(top)'")
        }
        return canonical
    }

    /// The variables a rendered dotenv file holds, from one view fetched now: each key it uses and the bytes its
    /// line carries (the value's text). Checked and audited as one read of the file.
    func renderedEntries(top: String, env: String, name: String) throws(SecretsError) -> [(String, SecretBytes)] {
        guard let file = resolver.rendered.file(top: top, env: env, name: name) else {
            throw SecretsError(.notFound, "'\(top)/\(env)/\(name)' is not a rendered file ([[files]])")
        }
        guard let format = file.format, format == .dotenv else {
            throw SecretsError(.invalidArgument, "--env-file takes a dotenv rendering; '\(top)/\(env)/\(name)' is \(file.kind)")
        }
        let path = InodeTable.FilePath(top: top, env: env, key: name)
        return try gate.read(path, caller: Caller.current, via: via, usingKeys: { () throws(SecretsError) in
            let view = try resolver.view(top: top, env: env)
            // The same refusals as the file's open (a key or value dotenv cannot hold).
            var rendered = try format.render(file.keys(of: view).compactMap { key in view.value(of: key).map { (key, $0) } })
            wipe(&rendered)
            let entries = file.keys(of: view).compactMap { key in view.value(of: key).map { (key, $0.fileBytes()) } }
            return (entries, "fresh", entries.map(\.0))
        })
    }

    func read(top: String, env: String, key: String) throws(SecretsError) -> SecretBytes {
        let path = InodeTable.FilePath(top: top, env: env, key: key)
        return try gate.read(path, caller: Caller.current, via: via, usingKeys: { () throws(SecretsError) in
            // A rendered file ([[files]]): one view of the env, fetched now.
            if let file = resolver.rendered.file(top: top, env: env, name: key) {
                let view = try resolver.view(top: top, env: env)
                let bytes = try resolver.rendered.render(file, top: top, env: env, view: view) { other throws(SecretsError) in
                    try resolver.view(top: other.top, env: other.env)
                }
                return (bytes, "fresh", file.keys(of: view))
            }
            guard let value = try resolver.resolve(top: top, env: env, key: key) else {
                throw SecretsError(.notFound, "no key '\(key)' in '\(top)/\(env)'")
            }
            return (value.fileBytes(), "fresh", nil)
        })
    }
}
