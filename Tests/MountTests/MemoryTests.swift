import Foundation
import Locking
import Testing
import TestSupport

/// Memory that stays private: locked (no swap), not dumpable (no core, no ptrace or /proc/<pid>/mem for the same
/// user), nothing secret in argv or the environment.
@Suite("memory hygiene", .serialized)
struct MemoryTests {
    static func status(_ pid: pid_t, _ field: String) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
        return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
    }

    @Test("a root daemon locks its memory (VmLck) and is not dumpable; argv and environ hold no value")
    func rootDaemon() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"locked-value-1\"\n")
        let fs = try fixture.mount(config: try fixture.writeConfig())
        #expect(try fs.readText("local/production/PASSWORD") == "locked-value-1")
        let worker = try #require(fs.workerPID())
        // (The daemon is the same build as this test: a sanitizer build's mlockall succeeds and locks nothing.)
        #expect(Sanitizers.runtimeLinked || Self.status(worker, "VmLck") > 0, "the worker's memory is not locked")
        for file in ["cmdline", "environ"] {
            let text = (try? String(contentsOfFile: "/proc/\(worker)/\(file)", encoding: .utf8)) ?? ""
            #expect(!text.contains("locked-value-1"))
        }
        #expect(!fs.log.contains("mlockall failed"))
    }

    @Test("every command is undumpable: `edit` run as uid 65534 cannot be read by another process of that uid")
    func sameUserCannotRead() throws {
        // (The daemon itself runs as root in these tests: /dev/fuse is root-only on these machines.)
        let setpriv = try requireTool("setpriv")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"private-value-2\"\n")
        let config = try fixture.writeConfig()
        // The editor says when edit has reached it (the decrypted copy exists), and holds until the test is done.
        let editing = fixture.dir.file("editing"), finished = fixture.dir.file("finished")
        let editor = try fixture.dir.write(
            "editor.sh",
            "#!/bin/sh\ntouch '\(editing)'\nfor i in $(seq 300); do [ -e '\(finished)' ] && exit 0; sleep 0.05; done\n",
            mode: 0o755)
        for path in [fixture.dir.path, config, fixture.dir.file("identity.txt"), fixture.dir.file("secrets.toml.age"), editor] {
            chown(path, 65534, 65534)
        }
        chmod(fixture.dir.path, 0o755)
        let asNobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        // A copy uid 65534 can run wherever the build folder is (a checkout under a 0700 folder, say).
        let binary = fixture.dir.file("secretsfs")
        try FileManager.default.copyItem(atPath: fixture.binary, toPath: binary)
        chmod(binary, 0o755)
        let edit = Process()
        edit.executableURL = URL(fileURLWithPath: setpriv)
        edit.arguments = Array(asNobody.dropFirst()) + [binary, "edit", "--config", config, "local"]
        edit.environment = ["EDITOR": editor, "PATH": "/usr/bin:/bin", "HOME": fixture.dir.path]
        edit.standardOutput = FileHandle.nullDevice
        edit.standardError = FileHandle.nullDevice
        try edit.run()
        defer {
            // Let edit finish on its own: killed, it could not wipe its tmpfs copy.
            _ = FileManager.default.createFile(atPath: finished, contents: nil)
            let deadline = Date().addingTimeInterval(20)
            while edit.isRunning && Date() < deadline { usleep(20_000) }
            if edit.isRunning { kill(edit.processIdentifier, SIGTERM) }
            edit.waitUntilExit()
        }
        // A control: an ordinary process of the same uid is readable by its peers.
        let control = Process()
        control.executableURL = URL(fileURLWithPath: setpriv)
        control.arguments = Array(asNobody.dropFirst()) + ["/bin/sleep", "5"]
        try control.run()
        defer {
            control.terminate()
            control.waitUntilExit()
        }
        try waitUntil("edit runs its editor", seconds: 20, every: 0.01) { FileManager.default.fileExists(atPath: editing) }
        // setpriv has dropped to uid 65534 and exec'd sleep.
        try waitUntil("the control process runs as 65534", seconds: 10, every: 0.01) {
            let comm = try? String(contentsOfFile: "/proc/\(control.processIdentifier)/comm", encoding: .utf8)
            return Self.status(control.processIdentifier, "Uid") == 65534 && comm == "sleep\n"
        }
        #expect(Self.status(edit.processIdentifier, "Uid") == 65534)
        #expect(try run(asNobody + ["/bin/cat", "/proc/\(control.processIdentifier)/environ"], timeout: 10).status == 0)
        for file in ["environ", "mem", "maps"] {
            let attempt = try run(asNobody + ["/bin/cat", "/proc/\(edit.processIdentifier)/\(file)"], timeout: 10)
            #expect(attempt.status != 0, "uid 65534 could read secretsfs edit's /proc/<pid>/\(file)")
        }
    }
}
