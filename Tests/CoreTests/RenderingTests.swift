import Logging
import SecretsCore
import Testing

/// Whole-env files: each format's quoting, byte for byte, and the keys a format cannot hold (the real parsers read
/// them back in the mount tests).
@Suite("rendered env files")
struct RenderingTests {
    static let entries: [(name: String, value: SecretValue)] = [
        ("A", .string("it's \"q\" $HOME \\n")), ("N", .int(5432)), ("F", .float(0.5)), ("B", .bool(true)),
        ("U", .string("ü\n")),
    ]

    func text(_ format: EnvFileFormat, _ entries: [(name: String, value: SecretValue)] = entries) throws -> String {
        String(decoding: try format.render(entries), as: UTF8.self)
    }

    @Test("each format writes its own quoting")
    func formats() throws {
        #expect(try text(.dotenv) == "A='it\\'s \"q\" $HOME \\\\n'\nN='5432'\nF='0.5'\nB='true'\nU='ü\n'\n")
        #expect(try text(.shell) == "export A='it'\\''s \"q\" $HOME \\n'\nexport N='5432'\nexport F='0.5'\nexport B='true'\nexport U='ü\n'\n")
        #expect(try text(.properties) == "A=it's \"q\" $HOME \\\\n\nN=5432\nF=0.5\nB=true\nU=\\u00fc\\n\n")
        #expect(try text(.json) == "{\n  \"A\": \"it's \\\"q\\\" $HOME \\\\n\",\n  \"N\": 5432,\n  \"F\": 0.5,\n  \"B\": true,\n  \"U\": \"ü\\n\"\n}\n")
        #expect(try text(.yaml) == "\"A\": \"it's \\\"q\\\" $HOME \\\\n\"\n\"N\": 5432\n\"F\": 0.5\n\"B\": true\n\"U\": \"ü\\n\"\n")
        #expect(try text(.toml) == "A = \"it's \\\"q\\\" $HOME \\\\n\"\nN = 5432\nF = 0.5\nB = true\nU = \"ü\\n\"\n")
    }

    @Test("numbers YAML 1.1 reads as floats, empty envs, keys needing quotes, leading spaces in properties")
    func edges() throws {
        #expect(try text(.yaml, [("E", .float(1e-05))]) == "\"E\": 1.0e-05\n")
        #expect(try text(.yaml, []) == "{}\n")
        #expect(try text(.json, []) == "{\n}\n")
        #expect(try text(.toml, [("a b", .string("x"))]) == "\"a b\" = \"x\"\n")
        #expect(try text(.properties, [("k=1", .string("  v"))]) == "k\\=1=\\ \\ v\n")
        #expect(try text(.toml, [("T", .table(["b": .int(1), "a": .array([.string("x")])]))]) == "T = { a = [\"x\"], b = 1 }\n")
    }

    @Test("a file of every env: one section per env (TOML tables, JSON and YAML objects of objects); line formats have none")
    func sections() throws {
        let sections: [(name: String, entries: [(name: String, value: SecretValue)])] = [
            ("default", [("PORT", .int(1))]), ("production", [("NAME", .string("p"))]),
        ]
        #expect(String(decoding: try EnvFileFormat.toml.renderSections(sections), as: UTF8.self)
            == "[default]\nPORT = 1\n\n[production]\nNAME = \"p\"\n")
        #expect(String(decoding: try EnvFileFormat.json.renderSections(sections), as: UTF8.self)
            == "{\n  \"default\": {\"PORT\":1},\n  \"production\": {\"NAME\":\"p\"}\n}\n")
        #expect(String(decoding: try EnvFileFormat.yaml.renderSections(sections), as: UTF8.self)
            == "\"default\": {\"PORT\": 1}\n\"production\": {\"NAME\": \"p\"}\n")
        #expect(throws: SecretsError.self) { try EnvFileFormat.dotenv.renderSections(sections) }
    }

    @Test("keys and values a format cannot hold are refused, naming the key and never the value")
    func refusals() {
        for (format, name, value) in [
            (EnvFileFormat.dotenv, "A B", SecretValue.string("hidden-1")), (.shell, "1X", .string("hidden-2")),
            (.shell, "A-B", .string("hidden-3")), (.toml, "N", .null), (.json, "R", .bytes([0xff, 0xfe])),
        ] {
            do {
                _ = try format.render([(name, value)])
                Issue.record("\(format) took \(name)")
            } catch {
                #expect(error.description.contains("'\(name)'") && !error.description.contains("hidden"), "\(error)")
            }
        }
    }

    @Test("the secrets API lists a rendered file with the env's keys, rendered from the same view; get-style reads render it")
    func apiListsRenderedFiles() throws {
        let store = FakeStore(name: "fake", envs: ["production": ["A": .string("a\"1"), "N": .int(7), "FRESH_X": .string("x")]])
        let config = try makeConfig("""

            [[files]]
            path = "fake/production/app.json"
            format = "json"
            keys = ["A", "N"]
            """)
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let core = FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"))
        let listed = try core.apiList(top: "fake", env: "production")
        #expect(listed.map(\.0).sorted() == ["A", "FRESH_X", "N", "app.json"])
        let rendered = try #require(listed.first { $0.0 == "app.json" }?.1.utf8String())
        #expect(rendered == "{\n  \"A\": \"a\\\"1\",\n  \"N\": 7\n}\n")
        #expect(try core.apiRead(top: "fake", env: "production", key: "app.json").utf8String() == rendered)
    }

    @Test("[[files]] config errors name file:line:column")
    func configErrors() {
        for (extra, fragment) in [
            ("[[files]]\npath = \"fake/a/b/app.json\"\nformat = \"json\"", "<store or scope>/<env>/<file name>"),
            ("[[files]]\npath = \"fake/production/app.ini\"\nformat = \"ini\"", "format must be one of"),
            ("[[files]]\npath = \"nope/production/app.json\"\nformat = \"json\"", "'nope' is not a configured store or scope"),
            ("[[files]]\npath = \"fake/production/app.json\"", "needs format"),
            ("[[files]]\npath = \"fake/.env\"\nformat = \"dotenv\"", "needs sections"),
        ] {
            do {
                _ = try makeConfig("\n" + extra)
                Issue.record("accepted: \(extra)")
            } catch {
                let text = "\(error)"
                #expect(text.hasPrefix("test.toml:") && !text.hasPrefix("test.toml:0"), "\(text)")
                #expect(text.contains(fragment), "\(text)")
            }
        }
    }
}
