/// One `[[files]]` entry: a file computed at open from one view of an env, never written anywhere.
///
/// ```toml
/// [[files]]
/// path = "billing/production/.env"   # <store or scope>/<env>/<file name>; the env may be a glob (billing/*/.env)
/// format = "dotenv"                  # dotenv | json | yaml | toml | properties | shell
/// keys = ["DB_*"]                    # globs over the env's keys; default: all
///
/// [[files]]
/// path = "vault/.secrets.toml"       # <store or scope>/<file name>: every env as a section (Dynaconf)
/// format = "toml"                    # toml | yaml | json
/// ```
public struct RenderedFileConfig: Sendable {
    public var top: String
    /// Nil: a file in the top's own directory with every env as a section.
    public var env: Glob?
    public var name: String
    /// Nil for a template.
    public var format: EnvFileFormat?
    /// `template` or `template_file`: text with `{{ }}` holes (then no format and no keys).
    public var template: SecretTemplate?
    /// Nil: every key of the env.
    public var keys: [Glob]?
    public var location: SourceLocation
    /// Where a template's own line and column count from: `template_file`'s path, or nil for inline text (then
    /// errors point at the `template` key).
    public var templateFile: String?

    /// What the file is, for listings and messages: its format, or "template".
    public var kind: String { format?.rawValue ?? "template" }

    init(_ section: ConfigSection, index: Int) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["path", "format", "keys", "template", "template_file"])
        location = section.error("path", "").location
        guard let path = try section.string("path") else {
            throw section.error(nil, "file #\(index + 1) needs path = \"<store or scope>/<env>/<file name>\"")
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3 || parts.count == 2, parts.allSatisfy({ !$0.isEmpty }) else {
            throw section.error(
                "path",
                "file #\(index + 1): path must be <store or scope>/<env>/<file name> (billing/production/.env) or <store or scope>/<file name> for every env as a section (vault/.secrets.toml)")
        }
        top = parts[0]
        env = parts.count == 3 ? Glob(parts[1]) : nil
        name = parts[parts.count - 1]
        guard EntryName.isValid(name), !name.contains("*"), !name.contains("?") else {
            throw section.error("path", "file #\(index + 1): '\(name)' cannot be a file name here")
        }
        keys = try section.stringArray("keys")?.map(Glob.init)
        let inline = try section.string("template")
        let file = try section.path("template_file")
        if inline != nil || file != nil {
            for key in ["format", "keys"] where section.values[key] != nil {
                throw section.error(key, "file #\(index + 1): a template names its keys itself: no \(key) with template")
            }
            guard inline == nil || file == nil else {
                throw section.error("template_file", "file #\(index + 1): template or template_file, not both")
            }
            guard env != nil else {
                throw section.error("path", "file #\(index + 1): a template renders one env: path <store or scope>/<env>/<file name>")
            }
            format = nil
            templateFile = file
            let text: String
            if let file {
                do {
                    text = try FileIO.readText(file)
                } catch {
                    throw section.error("template_file", "file #\(index + 1): cannot read template_file: \(error)")
                }
            } else {
                text = inline ?? ""
            }
            do {
                template = try SecretTemplate(parsing: text)
            } catch {
                throw templateError(section, line: error.line, column: error.column, error.message)
            }
            return
        }
        templateFile = nil
        template = nil
        guard let text = try section.string("format") else {
            throw section.error(nil, "file #\(index + 1) needs format = \(EnvFileFormat.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: " | ")), or a template")
        }
        guard let format = EnvFileFormat(rawValue: text) else {
            throw section.error("format", "file #\(index + 1): format must be one of \(EnvFileFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.format = format
        if env == nil, ![.toml, .yaml, .json].contains(format) {
            throw section.error("format", "file #\(index + 1): a file of every env needs sections: format toml, yaml or json")
        }
    }

    /// An error at a template's line and column: in `template_file` itself, or at the `template` key with the
    /// line and column inside its text.
    func templateError(_ section: ConfigSection, line: Int, column: Int, _ message: String) -> LocatedError {
        if let templateFile {
            return LocatedError(SourceLocation(file: templateFile, line: line, column: column), message)
        }
        return section.error("template", "template line \(line), column \(column): \(message)")
    }

    /// Every key this template names in another store or scope must be one the config has.
    func checkReferences(_ section: ConfigSection, tops: Set<String>) throws(LocatedError) {
        for (reference, line, column) in template?.references ?? [] {
            guard let top = reference.top, !tops.contains(top) else { continue }
            throw templateError(section, line: line, column: column, "'\(reference)': '\(top)' is not a configured store or scope")
        }
    }

    func matches(top: String, env: String, name: String) -> Bool {
        guard self.top == top, self.name == name else { return false }
        guard let glob = self.env else { return env == RenderedFiles.allEnvs }
        return env != RenderedFiles.allEnvs && glob.matches(env)
    }

    /// The view's keys this file uses, sorted; a template's: the keys it names (another env's as
    /// `<store or scope>/<env>/<key>`).
    public func keys(of view: EnvView) -> [String] {
        if let template { return template.references.map(\.reference.description) }
        return view.keys.filter { key in keys?.contains { $0.matches(key) } ?? true }.sorted()
    }

    /// The envs a template reads besides its own (`top/env`, where it stands).
    public func otherEnvs(top: String, env: String) -> [EnvKey] {
        var seen: Set<String> = []
        return (template?.references ?? []).compactMap { entry in
            guard let other = entry.reference.top, let otherEnv = entry.reference.env,
                other != top || otherEnv != env, seen.insert(other + "/" + otherEnv).inserted
            else { return nil }
            return EnvKey(top: other, env: otherEnv)
        }
    }
}

/// Every `[[files]]` entry, and rendering one from a view.
public struct RenderedFiles: Sendable {
    public let files: [RenderedFileConfig]
    /// The env of a file path that stands for a file of every env (in the top's own directory).
    public static let allEnvs = ""

    public init(_ files: [RenderedFileConfig]) { self.files = files }

    public var isEmpty: Bool { files.isEmpty }

    /// Whether any template names a key of another store, scope or env.
    public var readsOtherEnvs: Bool {
        files.contains { file in file.template?.references.contains { $0.reference.top != nil } ?? false }
    }

    /// The entry that makes `top/env/name` a rendered file (the first, in config order).
    /// (An env that carries a `lease_per` identity has its directory's files.)
    public func file(top: String, env: String, name: String) -> RenderedFileConfig? {
        let env = LeasePer.baseEnv(env)
        return files.first { $0.matches(top: top, env: env, name: name) }
    }

    /// The rendered files' names in an env directory, or in the top's own (`env` = `allEnvs`).
    public func names(top: String, env: String) -> [String] {
        let env = LeasePer.baseEnv(env)
        var seen: Set<String> = []
        return files.filter { $0.matches(top: top, env: env, name: $0.name) }.map(\.name).filter { seen.insert($0).inserted }
    }

    /// A file of every env: each env's view as a section (`[default]`, `[production]`, ...; Dynaconf's
    /// `environments = true` layout), in the file's format, `default` first.
    public func render(_ file: RenderedFileConfig, views: [(env: String, view: EnvView)]) throws(SecretsError) -> SecretBytes {
        let ordered = views.sorted { a, b in
            if (a.env == Resolver.defaultEnv) != (b.env == Resolver.defaultEnv) { return a.env == Resolver.defaultEnv }
            return a.env < b.env
        }
        // A template always renders one env (the config refuses one in the top's own directory).
        guard let format = file.format else { throw SecretsError(.invalidConfig, "a template renders one env") }
        var bytes = try format.renderSections(ordered.map { entry in
            (entry.env, file.keys(of: entry.view).compactMap { key in entry.view.value(of: key).map { (name: key, value: $0) } })
        })
        defer { wipe(&bytes) }
        return SecretBytes(bytes)
    }

    /// The file's bytes from one view of its env: each used key's value in the file's format, or the template with
    /// its holes filled (another env's keys from one view of it each, got from `other`). A key a template names
    /// that is not there fails the file: never an empty hole.
    public func render(
        _ file: RenderedFileConfig, top: String, env: String, view: EnvView,
        other: (EnvKey) throws(SecretsError) -> EnvView
    ) throws(SecretsError) -> SecretBytes {
        guard let template = file.template else {
            let entries = file.keys(of: view).compactMap { key in view.value(of: key).map { (name: key, value: $0) } }
            var bytes = try (file.format ?? .dotenv).render(entries)
            defer { wipe(&bytes) }
            return SecretBytes(bytes)
        }
        var others: [EnvKey: EnvView] = [:]
        for key in file.otherEnvs(top: top, env: env) { others[key] = try other(key) }
        var bytes = try template.render { reference throws(SecretsError) in
            var source = view
            var sourceName = "\(top)/\(env)"
            if let otherTop = reference.top, let otherEnv = reference.env, otherTop != top || otherEnv != env {
                sourceName = "\(otherTop)/\(otherEnv)"
                guard let otherView = others[EnvKey(top: otherTop, env: otherEnv)] else {
                    throw SecretsError(.notFound, "no env '\(sourceName)'")
                }
                source = otherView
            }
            guard let value = source.value(of: reference.key) else {
                throw SecretsError(.notFound, "its template uses '\(reference)', which '\(sourceName)' does not have")
            }
            return value
        }
        defer { wipe(&bytes) }
        return SecretBytes(bytes)
    }
}
