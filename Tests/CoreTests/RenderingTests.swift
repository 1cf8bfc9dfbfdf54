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
}
