import Foundation
import Testing
import TestSupport

/// Writes land where reads look: every write path (`set`, `write`, `import`, `--delete`; at the store and at a
/// scope's level) on every file shape, read back through the resolver (`get`) and through a mount.
@Suite("writes land where reads look", .serialized)
struct WriteMatrixTests {
    struct Shape: Sendable, CustomTestStringConvertible {
        var name: String
        /// The `files` value of the written store.
        var files: String
        /// Extra keys of the written store (`layout = ...`).
        var storeKeys: String = ""
        /// Each file with its first content and whether it is age-encrypted.
        var contents: [(file: String, text: String, encrypted: Bool)]
        /// Another env the store holds, written too (its file must change, not production's).
        var otherEnv: String?
        var testDescription: String { name }
    }

    static let shapes: [Shape] = [
        Shape(
            name: "envs layout (TOML, age)", files: #"["secrets.toml.age"]"#,
            contents: [("secrets.toml.age", "[production]\nSEED = \"s\"\n[staging]\nSEED = \"t\"\n", true)],
            otherEnv: "staging"),
        Shape(
            name: "store-level flat, the env in each files entry",
            files: #"[{ path = "prod.toml.age", env = "production" }, { path = "stage.toml.age", env = "staging" }]"#,
            storeKeys: "layout = \"flat\"",
            contents: [("prod.toml.age", "SEED = \"s\"\n", true), ("stage.toml.age", "SEED = \"t\"\n", true)],
            otherEnv: "staging"),
        Shape(
            name: "a per-file flat entry { path, env }", files: #"[{ path = "svc.toml.age", env = "production" }]"#,
            contents: [("svc.toml.age", "SEED = \"s\"\n", true)]),
        Shape(
            name: "a per-file layout = envs entry", files: #"[{ path = "all.toml.age", layout = "envs" }]"#,
            contents: [("all.toml.age", "[production]\nSEED = \"s\"\n", true)]),
        Shape(
            name: "dotenv (age), flat by its entry", files: #"[{ path = "app.env.age", env = "production" }]"#,
            contents: [("app.env.age", "# the app's settings\nSEED=s\n", true)]),
        Shape(
            name: "plaintext TOML, flat by its entry", files: #"[{ path = "plain.toml", env = "production" }]"#,
            contents: [("plain.toml", "SEED = \"s\"\n", false)]),
    ]

    @Test("set, write, import and --delete, at the store and at a scope level, read back by get and the mount", arguments: shapes)
    func writes(shape: Shape) throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        for content in shape.contents {
            if content.encrypted {
                try fixture.writeEncrypted(content.file, content.text)
            } else {
                _ = try fixture.dir.write(content.file, content.text, mode: 0o600)
            }
        }
        try fixture.writeEncrypted(
            "platform.toml.age", "[production]\nK1 = \"platform-1\"\nK2 = \"platform-2\"\nK3 = \"platform-3\"\n")
        let config = try fixture.dir.write(
            "matrix.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [stores.local]
            type = "file"
            files = \(shape.files)
            \(shape.storeKeys)
            identity = "identity.txt"
            recipients = ["\(fixture.identity.recipient)"]
            [stores.platform]
            type = "file"
            files = ["platform.toml.age"]
            identity = "identity.txt"
            [scopes.billing]
            chain = [{ level = "service", store = "local" }, { level = "platform", store = "platform" }]
            """)
        func cli(_ arguments: [String], input: [UInt8]? = nil) throws {
            let result = try fixture.cli(arguments, input: input)
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
        for (key, value) in [("K1", "v-1"), ("K2", "v-2"), ("K3", "v-3"), ("K4", "v-4"), ("SEED", "s")] {
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
            #expect(try get("local/\(other)/SEED") == "t")
        }
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("billing/production/K2") == "v-2", "\(shape.name): through the mount")
        #expect(try fs.readText("billing/production/K1") == "platform-1")
        #expect(try fs.readText("local/production/K4") == "v-4")
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
