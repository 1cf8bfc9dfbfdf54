/// One `[[files]]` entry: a file computed at open from one view of an env, never written anywhere.
///
/// ```toml
/// [[files]]
/// path = "billing/production/.env"   # <store or scope>/<env>/<file name>; the env may be a glob (billing/*/.env)
/// format = "dotenv"                  # dotenv | json | yaml | toml | properties | shell
/// keys = ["DB_*"]                    # globs over the env's keys; default: all
/// ```
public struct RenderedFileConfig: Sendable {
    public var top: String
    public var env: Glob
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
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else {
            throw section.error("path", "file #\(index + 1): path must be <store or scope>/<env>/<file name>, such as billing/production/.env")
        }
        top = parts[0]
        env = Glob(parts[1])
        name = parts[2]
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
    }

    func matches(top: String, env: String, name: String) -> Bool {
        self.top == top && self.name == name && self.env.matches(env)
    }

    /// The view's keys this file uses, sorted.
    public func keys(of view: EnvView) -> [String] {
        view.keys.filter { key in keys?.contains { $0.matches(key) } ?? true }.sorted()
    }
}

/// Every `[[files]]` entry, and rendering one from a view.
public struct RenderedFiles: Sendable {
    public let files: [RenderedFileConfig]

    public init(_ files: [RenderedFileConfig]) { self.files = files }

    public var isEmpty: Bool { files.isEmpty }

    /// The entry that makes `top/env/name` a rendered file (the first, in config order).
    public func file(top: String, env: String, name: String) -> RenderedFileConfig? {
        files.first { $0.matches(top: top, env: env, name: name) }
    }

    /// The rendered files' names in an env directory.
    public func names(top: String, env: String) -> [String] {
        var seen: Set<String> = []
        return files.filter { $0.top == top && $0.env.matches(env) }.map(\.name).filter { seen.insert($0).inserted }
    }

    /// The file's bytes from one view: each used key's value, rendered in the file's format.
    public func render(_ file: RenderedFileConfig, view: EnvView) throws(SecretsError) -> SecretBytes {
        let entries = file.keys(of: view).compactMap { key in view.value(of: key).map { (name: key, value: $0) } }
        var bytes = try file.format.render(entries)
        defer { wipe(&bytes) }
        return SecretBytes(bytes)
    }
}
