import Glibc
import SecretsCore

/// `type = "env"`: secrets from the daemon's own environment, the way Prefect 1 reads local secrets.
/// `PREFECT__CONTEXT__SECRETS__FOO=x` (the default `prefix`) is key `FOO` under env `default`, so under every env;
/// with `env_prefix = "SECRETS__"`, `SECRETS__PRODUCTION__FOO=x` is key `FOO` under `production`. Values are the
/// variables' exact bytes, as strings. A scope element's `path` replaces `prefix`.
public final class EnvStore: SecretStore {
    public let name: String
    let prefix: String
    let envPrefix: String?

    public init(config: StoreConfig) throws(LocatedError) {
        let section = config.section
        try section.rejectUnknown(allowed: ["type", "fresh", "fresh_max_age", "layout", "directory_layout", "prefix", "env_prefix"])
        name = config.name
        prefix = try section.string("prefix") ?? "PREFECT__CONTEXT__SECRETS__"
        envPrefix = try section.string("env_prefix")
        guard !prefix.isEmpty else { throw section.error("prefix", "prefix must not be empty") }
        if let envPrefix, envPrefix.isEmpty { throw section.error("env_prefix", "env_prefix must not be empty") }
    }

    /// The environment now, as name/value pairs (read on every call: the conformance suite changes it with setenv).
    static func variables() -> [(String, String)] {
        var out: [(String, String)] = []
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                out.append((String(text[..<equals]), String(text[text.index(after: equals)...])))
            }
            cursor += 1
        }
        return out
    }

    public func envs(at location: String?) throws(SecretsError) -> [String] {
        var names: Set<String> = []
        let own = location ?? prefix
        for (variable, _) in Self.variables() {
            if variable.hasPrefix(own), variable.count > own.count { names.insert(Resolver.defaultEnv) }
            if let envPrefix, variable.hasPrefix(envPrefix) {
                let rest = variable.dropFirst(envPrefix.count)
                if let separator = rest.range(of: "__"), separator.lowerBound > rest.startIndex,
                    separator.upperBound < rest.endIndex
                {
                    names.insert(rest[..<separator.lowerBound].lowercased())
                }
            }
        }
        return names.sorted()
    }

    public func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        let start: String
        if env == Resolver.defaultEnv {
            start = location ?? prefix
        } else if let envPrefix {
            start = envPrefix + env.uppercased() + "__"
        } else {
            return nil
        }
        var fields: [String: SecretValue] = [:]
        for (variable, value) in Self.variables() where variable.hasPrefix(start) && variable.count > start.count {
            fields[String(variable.dropFirst(start.count))] = .string(value)
        }
        return fields.isEmpty ? nil : fields
    }
}
