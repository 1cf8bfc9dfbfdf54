import Foundation
import SecretsCore

/// How the store logs in.
public enum VaultAuth: Sendable, Equatable {
    /// A token from a file, else VAULT_TOKEN / BAO_TOKEN, else ~/.vault-token (read again on re-login, so an agent
    /// may rotate it).
    case token(file: String?)
    case appRole(roleID: String, secretIDFile: String, mount: String)
    case userpass(username: String, passwordFile: String, mount: String)
    case kubernetes(role: String, jwtFile: String, mount: String)
}

public struct VaultSettings: Sendable {
    public enum KVVersion: String, Sendable { case v1 = "1", v2 = "2", auto }

    /// The cluster's nodes (one for a single server), tried in this order.
    public var addresses: [String]
    /// The first node.
    public var address: String { addresses[0] }
    public var mount: String
    public var path: String
    public var kvVersion: KVVersion
    public var namespace: String?
    public var caCert: String?
    public var skipVerify: Bool
    public var timeout: Double
    public var auth: VaultAuth
    /// `watch`: how often each env's KV v2 metadata is polled for a new version (nil: no polling, ttl only).
    public var watch: Double?

    /// `extra`: the keys a store type built on these settings adds (the leased stores' `roles`, ...).
    public init(
        config: StoreConfig, environment: [String: String] = ProcessInfo.processInfo.environment, extra: Set<String> = []
    ) throws(LocatedError) {
        let section = config.section
        try section.rejectUnknown(allowed: extra.union([
            "type", "fresh", "fresh_max_age", "layout", "directory_layout", "address", "addresses", "mount", "path", "kv_version", "namespace", "ca_cert", "skip_verify", "timeout", "watch",
            "token_file", "role_id", "secret_id_file", "username", "password_file", "role", "jwt_file", "auth_mount",
        ]))
        var listed: [String]
        var key = "address"
        if section.values["addresses"] != nil {
            guard section.values["address"] == nil else {
                throw section.error("addresses", "give address or addresses, not both")
            }
            key = "addresses"
            listed = try section.stringArray("addresses") ?? []
        } else if case .array? = section.values["address"] {
            listed = try section.stringArray("address") ?? []
        } else if let single = try section.string("address") ?? environment["VAULT_ADDR"] ?? environment["BAO_ADDR"] {
            listed = [single]
        } else {
            throw section.error(nil, "store '\(config.name)' needs address = \"https://...\" (or VAULT_ADDR)")
        }
        guard !listed.isEmpty else { throw section.error(key, "\(key) needs at least one URL") }
        for address in listed {
            guard address.hasPrefix("http://") || address.hasPrefix("https://") else {
                throw section.error(key, "\(key) must start with http:// or https:// (\(address))")
            }
        }
        addresses = listed.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        guard Set(addresses).count == addresses.count else {
            throw section.error(key, "\(key) names the same node twice")
        }
        mount = try section.string("mount") ?? "secret"
        path = try section.string("path") ?? "dynaconf"
        let version: String
        if case .int(let number)? = section.values["kv_version"] {
            version = String(number)
        } else {
            version = try section.string("kv_version") ?? "auto"
        }
        guard let parsed = KVVersion(rawValue: version) else {
            throw section.error("kv_version", "kv_version must be 1, 2 or \"auto\"")
        }
        kvVersion = parsed
        namespace = try section.string("namespace") ?? environment["VAULT_NAMESPACE"] ?? environment["BAO_NAMESPACE"]
        caCert = try section.path("ca_cert") ?? environment["VAULT_CACERT"] ?? environment["BAO_CACERT"]
        let skipFromEnvironment = ["1", "true", "yes"].contains(
            (environment["VAULT_SKIP_VERIFY"] ?? environment["BAO_SKIP_VERIFY"] ?? "").lowercased())
        skipVerify = try section.bool("skip_verify") ?? skipFromEnvironment
        timeout = try section.duration("timeout") ?? 5
        guard timeout > 0 else { throw section.error("timeout", "timeout must be more than 0") }
        watch = try section.duration("watch")
        if let watch, watch < 0.1 { throw section.error("watch", "watch must be at least 100ms") }

        let authMount = try section.string("auth_mount")
        if let roleID = try section.string("role_id") {
            guard let secretIDFile = try section.path("secret_id_file") else {
                throw section.error("role_id", "AppRole needs secret_id_file next to role_id")
            }
            auth = .appRole(roleID: roleID, secretIDFile: secretIDFile, mount: authMount ?? "approle")
        } else if let username = try section.string("username") {
            guard let passwordFile = try section.path("password_file") else {
                throw section.error("username", "userpass needs password_file next to username")
            }
            auth = .userpass(username: username, passwordFile: passwordFile, mount: authMount ?? "userpass")
        } else if let role = try section.string("role") {
            let jwt = try section.path("jwt_file") ?? "/var/run/secrets/kubernetes.io/serviceaccount/token"
            auth = .kubernetes(role: role, jwtFile: jwt, mount: authMount ?? "kubernetes")
        } else {
            auth = .token(file: try section.path("token_file"))
        }
    }
}
