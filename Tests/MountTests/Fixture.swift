import CLinux
import Age
import Foundation
import TestSupport

/// A temporary folder with an identity, encrypted secrets files and a config, and the mount made from them.
final class Fixture: @unchecked Sendable {
    let dir: TemporaryDirectory
    let identity = X25519Identity.generate()
    /// The binary `mount` starts (the skew tests point it at a copy they replace).
    var binary: String
    var mounted: MountedSecretsFS?

    init() throws {
        binary = try secretsfsBinary()
        _ = try requireTool("fusermount3")
        dir = try TemporaryDirectory()
        _ = try dir.write("identity.txt", identity.secretString + "\n", mode: 0o600)
    }

    var mountpoint: String { dir.file("mnt") }

    /// Encrypts `plaintext` to the fixture's identity into `name`.
    func writeEncrypted(_ name: String, _ plaintext: String) throws {
        let sealed = try AgeFile.encrypt(Array(plaintext.utf8), to: [.x25519(identity.recipient)])
        let temporary = dir.file(name + ".tmp")
        try Data(sealed).write(to: URL(fileURLWithPath: temporary))
        rename(temporary, dir.file(name))
    }

    /// A config with one file store `local` over `files`, plus `extra` TOML.
    func writeConfig(files: [String] = ["secrets.toml.age"], ttl: String = "5m", fresh: [String] = [], extra: String = "")
        throws -> String
    {
        let list = files.map { "\"\($0)\"" }.joined(separator: ", ")
        let freshList = fresh.map { "\"\($0)\"" }.joined(separator: ", ")
        let text = """
            [mount]
            path = "\(mountpoint)"

            [cache]
            ttl = "\(ttl)"
            fresh = [\(freshList)]

            [stores.local]
            type = "file"
            files = [\(list)]
            identity = "identity.txt"
            recipients = ["\(identity.recipient)"]

            \(extra)
            """
        return try dir.write("config.toml", text)
    }

    /// A config with a Vault store `vault` over `bao` and a Redis store `redis` over `redis`, both `fresh` for
    /// `DB_*` with `timeout = "1s"`, and `cache` as the `[cache]` table's lines.
    func writeTwoBackendConfig(bao: BaoServer, redis: RedisServer, cache: String) throws -> String {
        let token = try dir.write("vault-token", "root\n")
        return try dir.write(
            "two-backends.toml",
            twoBackendConfig(mountpoint: mountpoint, vaultAddress: bao.address, tokenFile: token, redisURL: redis.url, cache: cache))
    }

    /// A config with one Redis store `redis` over `redis` (`store`: more lines of its table; `mount`: of `[mount]`),
    /// a cache ttl of 10 minutes, and `extra` TOML after it.
    func writeRedisConfig(_ redis: RedisServer, store: String = "", mount: String = "", extra: String = "") throws -> String {
        try dir.write("redis.toml", """
            [mount]
            path = "\(mountpoint)"
            \(mount)
            [cache]
            ttl = "10m"
            [stores.redis]
            type = "redis"
            url = "\(redis.url)"
            \(store)
            \(extra)
            """)
    }

    func mount(config: String, environment: [String: String] = [:], arguments: [String] = []) throws -> MountedSecretsFS {
        let fs = try MountedSecretsFS(
            binary: binary, config: config, mountpoint: mountpoint, logPath: dir.file("mount.log"),
            environment: environment, arguments: arguments)
        mounted = fs
        return fs
    }

    func cli(_ arguments: [String], input: [UInt8]? = nil, environment: [String: String]? = nil) throws -> ProcessResult {
        try run([binary] + arguments, input: input, environment: environment, timeout: 60)
    }

    func tearDown() {
        mounted?.stop()
        // SECRETSFS_KEEP_TEST_DIRS=1 keeps the folder (config, encrypted files, daemon log) for a post-mortem.
        if ProcessInfo.processInfo.environment["SECRETSFS_KEEP_TEST_DIRS"] == nil { dir.remove() }
    }
}

let baseSecrets = """
    [default]
    PASSWORD = "default-password"
    PORT = 1234
    SHARED = "from-default"

    [production]
    PASSWORD = "0x1F"
    DB_HOST = "db.prod"
    RATIO = 1.5
    ENABLED = true
    NOTHING_HERE = []
    TABLE = { zeta = 2, alpha = "a" }
    "UNICODE_ü" = "päss wörd ✓"

    [development]
    PASSWORD = "dev-password"

    [global]
    SHARED = "from-global"
    """

extension Fixture {
    static func otherIdentity() -> String { X25519Identity.generate().secretString }
}

extension MountedSecretsFS {
    /// An extended attribute of a mounted file (nil: none), read with a timeout.
    func attribute(_ relative: String, _ name: String) throws -> String? {
        let full = path(relative)
        return try withTimeout(10, onTimeout: abortConnection) { () -> String? in
            var buffer = [CChar](repeating: 0, count: 512)
            let count = getxattr(full, name, &buffer, buffer.count)
            guard count >= 0 else { return nil }
            return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}
