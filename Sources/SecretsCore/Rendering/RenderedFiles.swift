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
    public var format: EnvFileFormat
    /// Nil: every key of the env.
    public var keys: [Glob]?
    public var location: SourceLocation

    init(_ section: ConfigSection, index: Int) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["path", "format", "keys"])
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
        guard let text = try section.string("format") else {
            throw section.error(nil, "file #\(index + 1) needs format = \(EnvFileFormat.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: " | "))")
        }
        guard let format = EnvFileFormat(rawValue: text) else {
            throw section.error("format", "file #\(index + 1): format must be one of \(EnvFileFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.format = format
        keys = try section.stringArray("keys")?.map(Glob.init)
        if env == nil, ![.toml, .yaml, .json].contains(format) {
            throw section.error("format", "file #\(index + 1): a file of every env needs sections: format toml, yaml or json")
        }
    }

    func matches(top: String, env: String, name: String) -> Bool {
        guard self.top == top, self.name == name else { return false }
        guard let glob = self.env else { return env == RenderedFiles.allEnvs }
        return env != RenderedFiles.allEnvs && glob.matches(env)
    }

    /// The view's keys this file uses, sorted.
    public func keys(of view: EnvView) -> [String] {
        view.keys.filter { key in keys?.contains { $0.matches(key) } ?? true }.sorted()
    }
}

/// Every `[[files]]` entry, and rendering one from a view.
public struct RenderedFiles: Sendable {
    public let files: [RenderedFileConfig]
    /// The env of a file path that stands for a file of every env (in the top's own directory).
    public static let allEnvs = ""

    public init(_ files: [RenderedFileConfig]) { self.files = files }

    public var isEmpty: Bool { files.isEmpty }

    /// The entry that makes `top/env/name` a rendered file (the first, in config order).
    public func file(top: String, env: String, name: String) -> RenderedFileConfig? {
        files.first { $0.matches(top: top, env: env, name: name) }
    }

    /// The rendered files' names in an env directory, or in the top's own (`env` = `allEnvs`).
    public func names(top: String, env: String) -> [String] {
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
        var bytes = try file.format.renderSections(ordered.map { entry in
            (entry.env, file.keys(of: entry.view).compactMap { key in entry.view.value(of: key).map { (name: key, value: $0) } })
        })
        defer { wipe(&bytes) }
        return SecretBytes(bytes)
    }

    /// The file's bytes from one view: each used key's value, rendered in the file's format.
    public func render(_ file: RenderedFileConfig, view: EnvView) throws(SecretsError) -> SecretBytes {
        let entries = file.keys(of: view).compactMap { key in view.value(of: key).map { (name: key, value: $0) } }
        var bytes = try file.format.render(entries)
        defer { wipe(&bytes) }
        return SecretBytes(bytes)
    }
}
