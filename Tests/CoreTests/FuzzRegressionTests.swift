import Foundation
import Age
import FuzzTargets
import SecretsCore
import Testing

/// Replays the fuzzers' seed corpus and every input a fuzzer once crashed on (Tests/Fuzz/Regressions/<target>/)
/// through the same code the fuzzers run: none may crash, hang or trap.
@Suite("fuzz regressions")
struct FuzzRegressionTests {
    static let fuzzRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ folder: String, _ target: String) -> [URL] {
        let directory = fuzzRoot.appendingPathComponent(folder).appendingPathComponent(target)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test("TOML keys are read without TOMLKit's leak (found by make fuzz), and parsing still works")
    func tomlKeysWithoutLeak() throws {
        #expect(TOMLDocument.readsKeysWithoutLeaking)
        let config = try Config.parse(text: "[stores.a]\ntype = \"file\"\nfiles = [\"x\"]\n[stores.b]\ntype = \"redis\"\n", file: "t.toml")
        #expect(config.stores.map(\.name).sorted() == ["a", "b"])
    }

    @Test("a table header with a non-ASCII bare name is refused with a location (toml++ aborted on it)")
    func nonASCIIHeader() throws {
        #expect(throws: LocatedError.self) { try TOMLDocument(file: "h.toml", text: "[\u{FC}nt]\nk = 1\n") }
        do {
            _ = try TOMLDocument(file: "h.toml", text: "a = 1\n  [[x.\u{FC}]]\n")
        } catch {
            #expect(error.location.line == 2 && error.location.column == 7)
        }
        // Valid documents with such text where it is allowed still parse.
        let quoted = try TOMLDocument(file: "q.toml", text: "[\"\u{FC}nt\"]\nk = 1\n")
        #expect(quoted.root["\u{FC}nt"] == .table(["k": .int(1)]))
        let multiline = try TOMLDocument(file: "m.toml", text: "[p]\nC = \"\"\"\n[\u{FC} not a header\n\"\"\"\n")
        #expect(multiline.root["p"] == .table(["C": .string("[\u{FC} not a header\n")]))
    }

    @Test("the age seeds open with the fuzzers' identity, so mutations reach the payload code")
    func ageSeedsOpen() throws {
        let identity = try #require(FuzzTargets.identity)
        for url in Self.inputs("Corpus", "age") {
            #expect(throws: Never.self) { try AgeFile.decrypt(Array(try Data(contentsOf: url)), identities: [.x25519(identity)]) }
        }
    }

    @Test("every target has seeds, and seeds and saved crash inputs run cleanly", arguments: FuzzTargets.all.keys.sorted())
    func replay(target: String) throws {
        let run = try #require(FuzzTargets.all[target])
        let seeds = Self.inputs("Corpus", target)
        #expect(!seeds.isEmpty, "no seed corpus for \(target)")
        for url in seeds + Self.inputs("Regressions", target) {
            run(Array(try Data(contentsOf: url)))
        }
    }
}
