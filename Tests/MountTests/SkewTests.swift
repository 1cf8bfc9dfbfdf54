import Foundation
import Testing
import TestSupport

/// Version skew between a running supervisor and the binary on disk: the previous release (built from its commit by
/// `make previous-release`) and this build, reloaded (SIGHUP) and re-executed (SIGUSR2) into each other under a
/// container's read loop.
@Suite("handover version skew", .serialized)
struct SkewTests {
    /// Puts `binary` at `path` the way a package upgrade does: a new file renamed over the old name.
    func install(_ binary: String, at path: String) throws {
        let temporary = path + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.copyItem(atPath: URL(fileURLWithPath: binary).resolvingSymlinksInPath().path, toPath: temporary)
        guard rename(temporary, path) == 0 else { throw TestFailure.message("rename: errno \(errno)") }
    }

    func containerFixture() throws -> (Fixture, String, String) {
        _ = try requireTool("unshare")
        _ = try requireTool("setpriv")
        let fixture = try Fixture()
        try fixture.writeEncrypted(
            "secrets.toml.age", "[default]\nPORT = 1234\n\n[production]\nPASSWORD = \"pw-1\"\nDB_HOST = \"db-1\"\n")
        chmod(fixture.dir.path, 0o755)
        let config = try fixture.writeConfig(fresh: ["DB_*"])
        let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(
            of: "[mount]\n", with: "[mount]\nallow_other = true\nfile_mode = \"0440\"\ndir_mode = \"0555\"\ngid = 65534\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let bin = fixture.dir.file("bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        chmod(bin, 0o755)
        return (fixture, config, bin + "/secretsfs")
    }

    @Test("previous release mounted: reload and re-exec into this build, a worker crash, then back: zero failed reads")
    func previousAndBack() throws {
        let previous = try previousReleaseBinary()
        let current = try secretsfsBinary()
        let (fixture, config, installed) = try containerFixture()
        defer { fixture.tearDown() }
        try install(previous, at: installed)
        fixture.binary = installed
        let fs = try fixture.mount(config: config)
        let supervisor = fs.process.processIdentifier
        let reader = try ContainerReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"], "PORT": ["1234"]],
            seconds: 120)
        defer { reader.stop() }
        try fs.waitForLog("serving")

        // The previous supervisor starts this build's worker: it speaks version 0 with it.
        try install(current, at: installed)
        kill(supervisor, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        // The previous supervisor re-executes into this build: the state it wrote (version 0) reads back.
        kill(supervisor, SIGUSR2)
        try fs.waitForLog("supervisor re-executed; the worker keeps serving")
        #expect(fs.log.contains("state_version=0"), "this build read the previous release's state")
        // This supervisor replaces a crashed worker with this build's, speaking version 1.
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")

        // And back: this supervisor reloads into the previous release, speaking version 0 with it...
        try install(previous, at: installed)
        kill(supervisor, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves", count: 2)
        #expect(fs.log.contains("speaking an older handover protocol with the binary on disk"))
        // ...and re-executes into it, writing its state in version 0; the previous supervisor still fails over.
        kill(supervisor, SIGUSR2)
        try fs.waitForLog("supervisor re-executed; the worker keeps serving", count: 2)
        let oldWorker = try #require(fs.workerPID())
        kill(oldWorker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection", count: 2)
        #expect(try fs.readText("local/production/PASSWORD") == "pw-1")
        let command = try String(contentsOfFile: "/proc/\(supervisor)/cmdline", encoding: .utf8)
        #expect(command.contains("--resume-state"), "the same PID runs the previous release again")

        #expect(reader.isReading, "every switch happened while the container read")
        reader.stop()
        let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
        #expect(report.failures.isEmpty, "failed reads in the container: \(report.failures)")
        #expect(report.unexpected == 0 && report.ok > 50)
        #expect(!fs.log.contains("pw-1") && !fs.log.contains("db-1"))
    }

    @Test("a binary that speaks no protocol this supervisor knows: reload and re-exec refused, the worker keeps serving")
    func refusal() throws {
        let (fixture, config, installed) = try containerFixture()
        defer { fixture.tearDown() }
        try install(try secretsfsBinary(), at: installed)
        fixture.binary = installed
        let fs = try fixture.mount(config: config)
        let supervisor = fs.process.processIdentifier
        try fs.waitForLog("serving")
        let worker = try #require(fs.workerPID())
        let reader = try ContainerReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"]], seconds: 120)
        defer { reader.stop() }
        // A future release that dropped versions 0 and 1 (it answers the question and does nothing else).
        let future = fixture.dir.file("future.sh")
        try "#!/bin/sh\necho 'secretsfs-handover 5 7'\nexit 0\n".write(toFile: future, atomically: true, encoding: .utf8)
        chmod(future, 0o755)
        try install(future, at: installed)
        kill(supervisor, SIGHUP)
        try fs.waitForLog("speaks no handover protocol this supervisor knows; refusing")
        kill(supervisor, SIGUSR2)
        try fs.waitForLog("speaks no handover protocol this supervisor knows; refusing", count: 2)
        #expect(fs.workerPID() == worker, "the running worker keeps serving")
        let command = try String(contentsOfFile: "/proc/\(supervisor)/cmdline", encoding: .utf8)
        #expect(!command.contains("--resume-state"), "no re-exec happened")
        #expect(try fs.readText("local/production/PASSWORD") == "pw-1")
        reader.stop()
        let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
        #expect(report.failures.isEmpty, "failed reads in the container: \(report.failures)")
        #expect(report.unexpected == 0 && report.ok > 0)
    }
}
