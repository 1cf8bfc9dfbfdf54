import Foundation
import Testing
import TestSupport

/// A request that makes every worker crash (a bug, a value that trips a decoder) must not take the mount down: it
/// is answered EIO after two crashes, and everything else keeps serving. The fault exists only in debug builds
/// (the ones tests run): `SECRETSFS_DEBUG_ABORT_ON_LOOKUP` names a key whose lookup aborts the worker.
@Suite("requests of death", .serialized)
struct RequestOfDeathTests {
    @Test("a lookup that aborts the worker gets EIO after two crashes; every other key keeps serving; the mount stays")
    func lookupOfDeath() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\nPOISON = \"never-served\"\n")
        let fs = try fixture.mount(
            config: try fixture.writeConfig(fresh: ["PASSWORD"]), environment: ["SECRETSFS_DEBUG_ABORT_ON_LOOKUP": "POISON"])
        let reader = LoopReader(fs, paths: ["local/production/PASSWORD"])
        defer { reader.stop() }
        try reader.waitForReads()
        for attempt in 1...2 {
            do {
                let text = try fs.readText("local/production/POISON", timeout: 30)
                Issue.record("the key of death read \(text.count) bytes")
            } catch let error as FSError {
                #expect(error.code == EIO, "attempt \(attempt): \(error)")
            }
            try fs.waitForLog("answered EIO by the supervisor, not resent", count: attempt)
            // Each attempt costs two workers: the first died on the request, the second on its resent copy.
            try fs.waitForLog("a new worker serves the connection", count: 2 * attempt)
            try reader.waitForReads()
        }
        // The page of the running worker survives a supervisor re-exec: the next request of death costs two
        // workers again, not three.
        kill(fs.process.processIdentifier, SIGUSR2)
        try fs.waitForLog("supervisor re-executed; the worker keeps serving")
        #expect(throws: FSError.self) { try fs.readText("local/production/POISON", timeout: 30) }
        try fs.waitForLog("answered EIO by the supervisor, not resent", count: 3)
        try fs.waitForLog("a new worker serves the connection", count: 6)
        try reader.waitForReads()
        let outcomes = reader.stop()
        let failed = outcomes.filter { $0.text != "pw-1" }
        #expect(failed.isEmpty, "\(failed.count) of \(outcomes.count) reads of another key failed")
        #expect(try fs.readText("local/production/PASSWORD") == "pw-1")
        let lines = fs.log.split(separator: "\n").filter { $0.contains("answered EIO by the supervisor") }
        #expect(lines.count == 3 && lines.allSatisfy { $0.contains("opcode=LOOKUP") && $0.contains("node=") }, "\(lines)")
        let deaths = fs.log.split(separator: "\n").filter { $0.contains("worker died; starting another") }
        #expect(deaths.count == 6, "three requests of death, two workers each: \(deaths.count) died")
        #expect(!fs.log.contains("never-served") && !fs.log.contains("pw-1"))
        #expect(MountedSecretsFS.isMounted(fixture.mountpoint))
    }

    @Test("workers SIGKILLed while requests are in flight name no culprit: nothing is answered EIO, everything is resent")
    func killsAreNotRequestsOfDeath() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\n")
        let fs = try fixture.mount(config: try fixture.writeConfig(fresh: ["PASSWORD"]))
        let readers = (0..<4).map { _ in LoopReader(fs, paths: ["local/production/PASSWORD"], pause: 0) }
        for reader in readers { try reader.waitForReads() }
        for round in 1...5 {
            let worker = try #require(fs.workerPID())
            kill(worker, SIGKILL)
            try fs.waitForLog("a new worker serves the connection", count: round)
            for reader in readers { try reader.waitForReads() }
        }
        let outcomes = readers.flatMap { $0.stop() }
        #expect(outcomes.allSatisfy { $0.text == "pw-1" }, "\(outcomes.filter { $0.text == nil }.count) failed reads")
        #expect(!fs.log.contains("answered EIO by the supervisor"))
    }
}
