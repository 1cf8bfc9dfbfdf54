import Foundation
import SecretsCore
import Testing
import Yams

@testable import FileStore

/// The decrypted SOPS document `secretsfs edit` shows is written as bytes; what it shows must read back as the same
/// values, whatever the characters (the editor's copy is encrypted again from it).
@Suite("plain SOPS documents (edit's view)")
struct PlainDocumentTests {
    static let entries: [(String, SecretValue)] = [
        ("PLAIN", .string("0x1F")),
        ("LOOKS_TRUE", .string("true")),
        ("EMPTY", .string("")),
        ("QUOTES", .string("say \"hi\" \\ back")),
        ("UNICODE_ü", .string("päss ✓ 🔑")),
        ("PEM", .string("-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n")),
        ("NO_FINAL_BREAK", .string("line 1\nline 2")),
        ("KEEP_BREAKS", .string("a\n\n\n")),
        ("LEADING_SPACES", .string("   indented\nnext")),
        ("ONLY_BREAK", .string("\n")),
        ("CONTROL", .string("bell\u{07} tab\t cr\r nel\u{85} ls\u{2028} bom\u{FEFF}")),
        ("with space", .string("v")),
        ("yes", .string("key that YAML 1.1 reads as a bool")),
        ("PORT", .int(5432)),
        ("RATIO", .float(1.5)),
        ("ON", .bool(true)),
        ("NOTHING", .null),
        ("NESTED", .table(["b": .int(2), "a": .string("x\ny"), "inner": .table(["deep": .bool(false)]), "none": .table([:])])),
        ("LIST", .array([.string("one"), .int(2), .string("multi\nline"), .table(["k": .string("v")]), .array([])])),
    ]

    func readBack(_ bytes: [UInt8]) throws -> [(String, SecretValue)] {
        let root = try #require(try Yams.compose(yaml: String(decoding: bytes, as: UTF8.self)))
        guard case .map(let body) = Sops.node(root) else {
            Issue.record("not a mapping")
            return []
        }
        return body.map { ($0.0, Sops.plainValue($0.1)) }
    }

    @Test("YAML and JSON read back as the same values, in order", arguments: [Sops.Format.yaml, .json])
    func roundTrip(format: Sops.Format) throws {
        let back = try readBack(PlainDocument.render(Self.entries, format: format))
        #expect(back.map(\.0) == Self.entries.map(\.0))
        for ((name, expected), (_, actual)) in zip(Self.entries, back) {
            #expect(actual == expected, "\(name) in \(format) did not read back")
        }
    }

    @Test("multi-line strings are literal blocks in YAML; dotenv and INI lines as sops writes them")
    func layout() throws {
        let yaml = String(decoding: PlainDocument.render([("PEM", .string("a\nb\n"))], format: .yaml), as: UTF8.self)
        #expect(yaml == "PEM: |4\n    a\n    b\n")
        let dotenv = PlainDocument.render([("A", .string("x\ny")), ("B", .int(1))], format: .dotenv)
        #expect(String(decoding: dotenv, as: UTF8.self) == "A=x\\ny\nB=1\n")
        let ini = PlainDocument.render(
            [("production", .table(["B": .string("2"), "A": .string("1")])), ("staging", .table(["C": .string("3")]))],
            format: .ini)
        #expect(String(decoding: ini, as: UTF8.self) == "[production]\nA = 1\nB = 2\n\n[staging]\nC = 3\n")
        #expect(String(decoding: PlainDocument.render([], format: .yaml), as: UTF8.self) == "{}\n")
    }
}
