import CLinux
import Foundation
import Testing
import TestSupport

/// Scopes with named levels, Ferris-style: service (a file), project (Redis), platform (OpenBao).
@Suite("named levels", .serialized)
struct LevelsTests {
    /// A config whose scope `billing` has levels service (the fixture's service.toml.age), project (Redis) and
    /// platform (OpenBao).
    static func threeLevels(_ fixture: Fixture, redis: RedisServer, bao: BaoServer) throws -> String {
        let token = try fixture.dir.write("vault-token", "root\n")
        return try fixture.writeConfig(extra: """
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
    }

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
        let config = try Self.threeLevels(fixture, redis: redis, bao: bao)
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
        func attribute(_ relative: String) throws -> String? { try fs.attribute(relative, "user.secretsfs.source") }
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

    @Test("set, write, import and --delete at each level (file, Redis, OpenBao); the right level wins on the mount and in get")
    func writeAtLevels() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        let bao = try BaoServer()
        defer { bao.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nLOCAL_ONLY = \"x\"\n")
        try fixture.writeEncrypted("service.toml.age", "[production]\nSEED = \"s\"\n")
        let config = try Self.threeLevels(fixture, redis: redis, bao: bao)
        func get(_ key: String) throws -> (Int32, String) {
            let result = try fixture.cli(["get", "--config", config, "billing/production/\(key)"])
            return (result.status, result.stdoutText)
        }
        // Without --level, set on a scope lists the levels.
        let noLevel = try fixture.cli(["set", "--config", config, "billing", "production", "DB_PASS=x"])
        #expect(noLevel.status == 2 && noLevel.stderr.contains("service, project, platform"))
        // platform (Vault), then project (Redis, from stdin), then service (file): each wins over the one below.
        #expect(try fixture.cli(["set", "--config", config, "billing", "production", "DB_PASS=platform-1", "--level", "platform"]).status == 0)
        #expect(try get("DB_PASS") == (0, "platform-1"))
        #expect(try fixture.cli(["set", "--config", config, "billing", "production", "DB_PASS", "--level", "project"], input: Array("project-1\n".utf8)).status == 0)
        #expect(try get("DB_PASS") == (0, "project-1"))
        #expect(try fixture.cli(["write", "--config", config, "billing", "-e", "production", "--level", "service", "DB_PASS=service-1"]).status == 0)
        #expect(try get("DB_PASS") == (0, "service-1"))
        // Structured values (Ferris's {"somekey": "someval"}) read back as compact JSON, at every kind of store.
        for level in ["service", "project", "platform"] {
            let result = try fixture.cli(["set", "--config", config, "billing", "production", "OBJ_\(level.uppercased())={\"somekey\": \"someval\"}", "--level", level, "--json"])
            #expect(result.status == 0, "\(level): \(result.stderr)")
            #expect(try get("OBJ_\(level.uppercased())") == (0, #"{"somekey":"someval"}"#))
        }
        // Deleting a level's key uncovers the next one.
        #expect(try fixture.cli(["set", "--config", config, "billing", "production", "--level", "service", "--delete", "DB_PASS"]).status == 0)
        #expect(try get("DB_PASS") == (0, "project-1"))
        #expect(try fixture.cli(["write", "--config", config, "billing", "-e", "production", "--level", "project", "--delete", "DB_PASS"]).status == 0)
        #expect(try get("DB_PASS") == (0, "platform-1"))
        #expect(try fixture.cli(["write", "--config", config, "billing", "-e", "production", "--level", "platform", "--delete", "DB_PASS"]).status == 0)
        #expect(try get("DB_PASS").0 == 3, "missing at every level is missing")

        // import: a secrets.json at the service level, one write; bad files change nothing.
        let json = try fixture.dir.write("secrets.json", #"{"API_TOKEN": "tok-1", "LIMITS": {"rps": 5}, "RETRIES": 3}"#)
        #expect(try fixture.cli(["import", "--config", config, "billing", "production", "--level", "service", json]).status == 0)
        #expect(try get("API_TOKEN") == (0, "tok-1"))
        #expect(try get("LIMITS") == (0, #"{"rps":5}"#))
        #expect(try get("RETRIES") == (0, "3"))
        for bad in [#"["a"]"#, "42", #"{"a/b": "x"}"#, "{not json"] {
            let file = try fixture.dir.write("bad.json", bad)
            let result = try fixture.cli(["import", "--config", config, "billing", "production", "--level", "project", file])
            #expect(result.status != 0 && result.stderr.contains("nothing was written") || result.stderr.contains("not a JSON object"), "\(bad): \(result.stderr)")
        }
        #expect(try redis.cli(["HLEN", "DYNACONF_PRODUCTION"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "only OBJ_PROJECT")
        // --replace: the level holds exactly the file's keys.
        let small = try fixture.dir.write("small.json", #"{"ONLY": "one"}"#)
        #expect(try fixture.cli(["import", "--config", config, "billing", "production", "--level", "service", "--replace", small]).status == 0)
        #expect(try get("API_TOKEN").0 == 3)
        #expect(try get("ONLY") == (0, "one"))
        // Through the mount, the same levels win.
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("billing/production/ONLY") == "one")
        #expect(try fs.readText("billing/production/OBJ_PLATFORM") == #"{"somekey":"someval"}"#)
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
