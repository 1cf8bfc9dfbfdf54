import Foundation
import Age
import FuzzTargets
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
