import Foundation
import Testing
import TestSupport

/// Writes land where reads look: every write path (`set`, `write`, `import`, `edit`, `--delete`; at the store and at
/// a scope's level) on every file shape (age, plaintext, dotenv, SOPS YAML/JSON/dotenv/INI; envs layout, store-level
/// flat, per-file `{ path, env }`, per-file layout) and on Redis and Vault, read back through the resolver (`get`)
/// and through a mount. One table, one test body.
@Suite("writes land where reads look", .serialized)
struct WriteMatrixTests {
    enum Encoding: Sendable {
        case age
        case plain
        /// Encrypted by the real sops (`type` for formats sops does not take from the file name).
        case sops(type: String?)
    }

    enum Backend: Sendable {
        /// Each file with its first content.
        case files([(file: String, text: String, encoding: Encoding)])
        /// A real redis-server; `DYNACONF_PRODUCTION` and `DYNACONF_STAGING` hashes.
        case redis
        /// A real OpenBao dev server; `secret/dynaconf/production` and `.../staging`.
        case vault
    }

    struct Shape: Sendable, CustomTestStringConvertible {
        var name: String
        var backend: Backend
        /// The `files` value of a file store.
        var files: String = ""
        /// Extra keys of the written store (`layout = ...`).
        var storeKeys: String = ""
        /// Another env the store holds, written too (its file must change, not production's).
        var otherEnv: String? = "staging"
        /// `edit --file` for file stores (nil: the last file); edit does not apply to Redis and Vault.
        var editFile: String?
        var testDescription: String { name }

        var editable: Bool {
            if case .files = backend { return true }
            return false
        }
    }

    static let shapes: [Shape] = [
        Shape(
            name: "envs layout (TOML, age)", backend: .files([("secrets.toml.age", "[production]\nSEED = \"s\"\n[staging]\nSEED = \"t\"\n", .age)]),
            files: #"["secrets.toml.age"]"#),
        Shape(
            name: "store-level flat, the env in each files entry",
            backend: .files([("prod.toml.age", "SEED = \"s\"\n", .age), ("stage.toml.age", "SEED = \"t\"\n", .age)]),
            files: #"[{ path = "prod.toml.age", env = "production" }, { path = "stage.toml.age", env = "staging" }]"#,
            storeKeys: "layout = \"flat\"", editFile: "prod.toml.age"),
        Shape(
            name: "a per-file flat entry { path, env }", backend: .files([("svc.toml.age", "SEED = \"s\"\n", .age)]),
            files: #"[{ path = "svc.toml.age", env = "production" }]"#, otherEnv: nil),
        Shape(
            name: "a per-file layout = envs entry", backend: .files([("all.toml.age", "[production]\nSEED = \"s\"\n[staging]\nSEED = \"t\"\n", .age)]),
            files: #"[{ path = "all.toml.age", layout = "envs" }]"#),
        Shape(
            name: "dotenv (age), flat by its entry", backend: .files([("app.env.age", "# the app's settings\nSEED=s\n", .age)]),
            files: #"[{ path = "app.env.age", env = "production" }]"#, otherEnv: nil),
        Shape(
            name: "plaintext TOML, flat by its entry", backend: .files([("plain.toml", "SEED = \"s\"\n", .plain)]),
            files: #"[{ path = "plain.toml", env = "production" }]"#, otherEnv: nil),
        Shape(
            name: "SOPS YAML, envs layout", backend: .files([("app.enc.yaml", "production:\n  SEED: s\nstaging:\n  SEED: t\n", .sops(type: nil))]),
            files: #"["app.enc.yaml"]"#),
        Shape(
            name: "SOPS JSON, flat by its entry", backend: .files([("app.enc.json", #"{"SEED": "s"}"#, .sops(type: nil))]),
            files: #"[{ path = "app.enc.json", env = "production" }]"#, otherEnv: nil),
        Shape(
            name: "SOPS dotenv, flat by its entry", backend: .files([("app.enc.env", "SEED=s\n", .sops(type: "dotenv"))]),
            files: #"[{ path = "app.enc.env", env = "production" }]"#, otherEnv: nil),
        Shape(
            name: "SOPS INI, envs layout", backend: .files([("app.enc.ini", "[production]\nSEED = s\n[staging]\nSEED = t\n", .sops(type: "ini"))]),
            files: #"["app.enc.ini"]"#),
        Shape(name: "Redis hashes (Dynaconf's layout)", backend: .redis),
        Shape(name: "Vault KV v2 (Dynaconf's layout)", backend: .vault),
    ]

    @Test("set, write, import, edit and --delete, at the store and at a scope level, read back by get and the mount", arguments: shapes)
    func writes(shape: Shape) throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        var servers: [() -> Void] = []
        defer { servers.forEach { $0() } }
        let store: String
        switch shape.backend {
        case .files(let contents):
            for content in contents {
                switch content.encoding {
                case .age: try fixture.writeEncrypted(content.file, content.text)
                case .plain: _ = try fixture.dir.write(content.file, content.text, mode: 0o600)
                case .sops(let type): try SopsTests.SopsTool(fixture).encrypt(content.file, content.text, type: type)
                }
            }
            store = """
                type = "file"
                files = \(shape.files)
                \(shape.storeKeys)
                identity = "identity.txt"
                recipients = ["\(fixture.identity.recipient)"]
                """
        case .redis:
            let redis = try RedisServer()
            servers.append { redis.remove() }
            try redis.hset("DYNACONF_PRODUCTION", [("SEED", "s")])
            try redis.hset("DYNACONF_STAGING", [("SEED", "t")])
            store = "type = \"redis\"\nurl = \"\(redis.url)\""
        case .vault:
            let bao = try BaoServer()
            servers.append { bao.remove() }
            try bao.cli(["kv", "put", "secret/dynaconf/production", "SEED=s"])
            try bao.cli(["kv", "put", "secret/dynaconf/staging", "SEED=t"])
            let token = try fixture.dir.write("vault-token", "root\n", mode: 0o600)
            store = "type = \"vault\"\naddress = \"\(bao.address)\"\ntoken_file = \"\(token)\""
        }
        try fixture.writeEncrypted(
            "platform.toml.age", "[production]\nK1 = \"platform-1\"\nK2 = \"platform-2\"\nK3 = \"platform-3\"\n")
        let config = try fixture.dir.write(
            "matrix.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [stores.local]
            \(store)
            [stores.platform]
            type = "file"
            files = ["platform.toml.age"]
            identity = "identity.txt"
            [scopes.billing]
            chain = [{ level = "service", store = "local" }, { level = "platform", store = "platform" }]
            """)
        func cli(_ arguments: [String], input: [UInt8]? = nil, environment: [String: String]? = nil) throws {
            let result = try fixture.cli(arguments, input: input, environment: environment)
            #expect(result.status == 0, "\(shape.name): \(arguments.prefix(2)): \(result.stderr)")
            #expect(!result.stderr.contains("v-1") && !result.stdoutText.contains("v-1"))
        }
        func get(_ path: String) throws -> String? {
            let result = try fixture.cli(["get", "--config", config, path])
            return result.status == 0 ? result.stdoutText : nil
        }
        try cli(["set", "--config", config, "local", "production", "K1=v-1"])
        try cli(["write", "--config", config, "billing", "-e", "production", "--level", "service", "K2=v-2"])
        let json = try fixture.dir.write("svc.json", #"{"K3": "v-3", "K4": "v-4"}"#)
        try cli(["import", "--config", config, "billing", "production", "--level", "service", json])
        var seed = "s"
        if shape.editable {
            // The editor changes production's SEED in whatever form the decrypted view shows it (`SEED = "s"`,
            // `SEED=s`, `SEED: s`, `"SEED": "s"`); staging's SEED is `t` and stays.
            let editor = try fixture.dir.write("editor.sh", "#!/bin/sh\nsed -i 's/\\(SEED[^s]*\\)s/\\1e/' \"$1\"\n", mode: 0o755)
            try cli(["edit", "--config", config, "local"] + (shape.editFile.map { ["--file", $0] } ?? []), environment: ["EDITOR": editor])
            seed = "e"
        }
        for (key, value) in [("K1", "v-1"), ("K2", "v-2"), ("K3", "v-3"), ("K4", "v-4"), ("SEED", seed)] {
            #expect(try get("billing/production/\(key)") == value, "\(shape.name): billing/production/\(key)")
            #expect(try get("local/production/\(key)") == value, "\(shape.name): local/production/\(key)")
        }
        // Nothing landed under a name reads do not look at (an env's name as a key of a flat file).
        #expect(try get("local/production/production") == nil, "\(shape.name): a key named after the env")
        // --delete uncovers the next level.
        try cli(["write", "--config", config, "billing", "-e", "production", "--level", "service", "--delete", "K1"])
        #expect(try get("billing/production/K1") == "platform-1", "\(shape.name): after --delete")
        #expect(try get("local/production/K1") == nil)
        if let other = shape.otherEnv {
            try cli(["set", "--config", config, "local", other, "K5=v-5"])
            #expect(try get("local/\(other)/K5") == "v-5", "\(shape.name): \(other)")
            #expect(try get("local/production/K5") == nil, "\(shape.name): a write to \(other) reached production")
            #expect(try get("local/\(other)/SEED") == "t", "\(shape.name): \(other)'s SEED")
        }
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("billing/production/K2") == "v-2", "\(shape.name): through the mount")
        #expect(try fs.readText("billing/production/K1") == "platform-1")
        #expect(try fs.readText("local/production/K4") == "v-4")
        #expect(try fs.readText("local/production/SEED") == seed)
        #expect(!fs.log.contains("v-2"))
    }

    @Test("a write no file can hold is refused, naming the files and their envs; nothing changes")
    func refused() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("svc.toml.age", "SEED = \"s\"\n")
        let config = try fixture.writeConfig(files: [])
        let text = try String(contentsOfFile: config, encoding: .utf8)
            .replacingOccurrences(of: "files = []", with: #"files = [{ path = "svc.toml.age", env = "production" }]"#)
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let before = try Data(contentsOf: URL(fileURLWithPath: fixture.dir.file("svc.toml.age")))
        let result = try fixture.cli(["set", "--config", config, "local", "staging", "K=v"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("holds env 'staging'") && result.stderr.contains("holds production"), "\(result.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: fixture.dir.file("svc.toml.age"))) == before)
    }
}
