import CLinux
import Foundation
import Testing
import TestSupport

/// Scopes with named levels, Ferris-style: service (a file), project (Redis), platform (OpenBao).
@Suite("named levels", .serialized)
struct LevelsTests {
    @Test("get --explain and the user.secretsfs.source attribute name the level that serves a key; never a value")
    func explain() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        let bao = try BaoServer()
        defer { bao.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nLOCAL_ONLY = \"x\"\n")
        try fixture.writeEncrypted("service.toml.age", "[production]\nAPI_KEY = \"service-secret-1\"\n")
        try redis.hset("DYNACONF_PRODUCTION", [("DB_PASS", "project-secret-2")])
        try bao.cli(["kv", "put", "secret/dynaconf/default", "DB_PASS=platform-secret-3", "REGION=eu-platform"])
        let token = try fixture.dir.write("vault-token", "root\n")
        let config = try fixture.writeConfig(extra: """
            [stores.redis]
            type = "redis"
            url = "\(redis.url)"

            [stores.vault]
            type = "vault"
            address = "\(bao.address)"
            token_file = "\(token)"

            [scopes.billing]
            chain = [
                { level = "service", store = "local", path = "service.toml.age" },
                { level = "project", store = "redis" },
                { level = "platform", store = "vault" },
            ]
            """)
        let explained = try fixture.cli(["get", "--config", config, "--explain", "billing/production/DB_PASS"])
        #expect(explained.status == 0)
        #expect(explained.stdoutText.contains("served by level project (store redis, env production)"), "\(explained.stdoutText)")
        #expect(explained.stdoutText.contains("shadowed: level platform (store vault, env default)"))
        let service = try fixture.cli(["get", "--config", config, "--explain", "billing/production/API_KEY"])
        #expect(service.stdoutText.contains("level service (store local, location service.toml.age, env production)"))
        let missing = try fixture.cli(["get", "--config", config, "--explain", "billing/production/NOPE"])
        #expect(missing.status == 3 && missing.stderr.contains("at any level"))
        let check = try fixture.cli(["check", "--config", config])
        #expect(check.stdoutText.contains("scope billing: levels service=local@service.toml.age -> project=redis -> platform=vault"))

        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("billing/production/DB_PASS") == "project-secret-2")
        func attribute(_ relative: String) throws -> String? {
            let full = fs.path(relative)
            return try withTimeout(10, onTimeout: fs.abortConnection) { () -> String? in
                var buffer = [CChar](repeating: 0, count: 512)
                let count = getxattr(full, "user.secretsfs.source", &buffer, buffer.count)
                guard count >= 0 else { return nil }
                return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
        }
        #expect(try attribute("billing/production/DB_PASS") == "level=project store=redis env=production shadowed=platform")
        #expect(try attribute("billing/production/REGION") == "level=platform store=vault env=default")
        // Deleting the project's key uncovers the platform's, and the attribute follows.
        _ = try redis.cli(["HDEL", "DYNACONF_PRODUCTION", "DB_PASS"])
        #expect(try attribute("billing/production/DB_PASS") == "level=platform store=vault env=default")
        #expect(throws: FSError(code: ENOENT)) { try fs.read("billing/production/NOPE") }
        for value in ["service-secret-1", "project-secret-2", "platform-secret-3"] {
            #expect(!explained.stdoutText.contains(value) && !fs.log.contains(value))
        }
    }

    @Test("level names: unique in a scope and usable as names; errors carry file and line")
    func badLevels() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nA = \"a\"\n")
        let duplicate = try fixture.writeConfig(extra: """
            [scopes.app]
            chain = [{ level = "x", store = "local" }, { level = "x", store = "local", path = "other.toml.age" }]
            """)
        let result = try fixture.cli(["check", "--config", duplicate])
        #expect(result.status == 2 && result.stderr.contains("config.toml:") && result.stderr.contains("two levels named 'x'"))
        // Without level names (configs from before levels), a repeated store gets its position: local, local-2.
        let unnamed = try fixture.writeConfig(extra: "[scopes.app]\nchain = [{ store = \"local\", path = \"secrets.toml.age\" }, \"local\"]\n")
        let check = try fixture.cli(["check", "--config", unnamed])
        #expect(check.status == 0 && check.stdoutText.contains("levels local@secrets.toml.age -> local-2=local"), "\(check.stdoutText)")
        let bad = try fixture.writeConfig(extra: "[scopes.app]\nchain = [{ level = \"a/b\", store = \"local\" }]\n")
        #expect(try fixture.cli(["check", "--config", bad]).status == 2)
    }
}
