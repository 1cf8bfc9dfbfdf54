import Foundation
import Locking
import Testing
import TestSupport

@Suite("mounted filesystem", .serialized)
struct MountTests {
    @Test("tree, exact bytes, Dynaconf layering, case-insensitive lookup, ENOENT")
    func treeAndBytes() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig(extra: "[scopes.app]\nchain = [\"local\"]\n"))

        #expect(try fs.list("") == ["app", "local"])
        #expect(try fs.list("local") == ["default", "development", "global", "production"])
        #expect(
            try fs.list("local/production") == [
                "DB_HOST", "ENABLED", "NOTHING_HERE", "PASSWORD", "PORT", "RATIO", "SHARED", "TABLE", "UNICODE_ü",
            ])
        #expect(try fs.read("local/production/PASSWORD") == Array("0x1F".utf8))
        #expect(try fs.readText("local/production/PORT") == "1234")
        #expect(try fs.readText("local/production/RATIO") == "1.5")
        #expect(try fs.readText("local/production/ENABLED") == "true")
        #expect(try fs.readText("local/production/NOTHING_HERE") == "[]")
        #expect(try fs.readText("local/production/TABLE") == #"{"alpha":"a","zeta":2}"#)
        #expect(try fs.readText("local/production/UNICODE_ü") == "päss wörd ✓")
        #expect(try fs.readText("local/production/SHARED") == "from-global")
        #expect(try fs.readText("local/development/PORT") == "1234")
        #expect(try fs.readText("local/default/PASSWORD") == "default-password")
        #expect(try fs.list("local/global") == ["SHARED"])
        #expect(try fs.readText("local/production/password") == "0x1F")
        #expect(try fs.readText("app/production/PASSWORD") == "0x1F")
        #expect(try fs.status("local/production/PASSWORD").st_size == 4)
        #expect(throws: FSError(code: ENOENT)) { try fs.read("local/production/MISSING") }
        #expect(throws: FSError(code: ENOENT)) { try fs.list("local/staging") }
        #expect(throws: FSError(code: ENOENT)) { try fs.list("nosuchstore") }
        #expect(!fs.log.contains("0x1F") && !fs.log.contains("default-password"))
    }

    @Test("owner and modes come from the config; every write is EROFS")
    func modesAndReadOnly() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let config = try fixture.writeConfig()
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "[mount]\n", with: "[mount]\nuid = 1234\ngid = 2345\nfile_mode = \"0440\"\ndir_mode = \"0550\"\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try fixture.mount(config: config)

        let file = try fs.status("local/production/PASSWORD")
        #expect(file.st_uid == 1234 && file.st_gid == 2345)
        #expect(file.st_mode & 0o7777 == 0o440 && file.st_mode & S_IFMT == S_IFREG)
        let dir = try fs.status("local/production")
        #expect(dir.st_mode & 0o7777 == 0o550 && dir.st_mode & S_IFMT == S_IFDIR)

        #expect(try fs.errnoOf("local/production/PASSWORD") { open($0, O_WRONLY) } == EROFS)
        #expect(try fs.errnoOf("local/production/NEW") { open($0, O_WRONLY | O_CREAT, 0o600) } == EROFS)
        #expect(try fs.errnoOf("local/production/PASSWORD") { unlink($0) } == EROFS)
        #expect(try fs.errnoOf("local/production/DIR") { mkdir($0, 0o700) } == EROFS)
        #expect(try fs.errnoOf("local/production/PASSWORD") { chmod($0, 0o777) } == EROFS)
        #expect(try fs.errnoOf("local/production/PASSWORD") { rename($0, $0 + "2") } == EROFS)
    }

    @Test("allow_other lets another user read what the modes allow; without it the kernel keeps others out")
    func otherUsers() throws {
        let setpriv = try requireTool("setpriv")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        chmod(fixture.dir.path, 0o755)  // let `nobody` walk to the mount point
        let asNobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]

        let config = try fixture.writeConfig()
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "[mount]\n", with: "[mount]\nallow_other = true\nfile_mode = \"0440\"\ndir_mode = \"0555\"\ngid = 65534\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try fixture.mount(config: config)
        let granted = try run(asNobody + [fs.path("local/production/PASSWORD")], timeout: 10)
        #expect(granted.status == 0 && granted.stdout == Array("0x1F".utf8), "\(granted.stderr)")
        _ = fs.signal(SIGTERM)

        text = text.replacingOccurrences(of: "gid = 65534\n", with: "")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let restricted = try fixture.mount(config: config)
        let denied = try run(asNobody + [restricted.path("local/production/PASSWORD")], timeout: 10)
        #expect(denied.status != 0 && denied.stderr.contains("Permission denied"), "\(denied.stderr)")
        _ = restricted.signal(SIGTERM)

        let closed = try fixture.mount(config: try fixture.writeConfig())
        let outsider = try run(asNobody + [closed.path("local/production/PASSWORD")], timeout: 10)
        #expect(outsider.status != 0, "without allow_other other users must not get in")
    }

    @Test("a fresh key shows a change on the very next open; a cached key after the push from inotify")
    func freshAndCached() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig(fresh: ["DB_*"]))
        #expect(try fs.readText("local/production/DB_HOST") == "db.prod")
        #expect(try fs.readText("local/production/PASSWORD") == "0x1F")

        try fixture.writeEncrypted(
            "secrets.toml.age",
            baseSecrets.replacingOccurrences(of: "db.prod", with: "db2.prod").replacingOccurrences(
                of: "\"0x1F\"", with: "\"rotated\""))
        #expect(try fs.readText("local/production/DB_HOST") == "db2.prod")

        #expect(try fs.readText("local/production/PASSWORD", until: "rotated", within: 5) == "rotated")
    }

    @Test("one open reads one value: a 1 MiB fresh value read a byte at a time while it changes")
    func oneOpenOneValue() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let size = 1 << 20
        let first = String(repeating: "a", count: size - 1) + "1"
        let second = String(repeating: "b", count: size - 1) + "2"
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nBIG = \"\(first)\"\n")
        let fs = try fixture.mount(config: try fixture.writeConfig(fresh: ["BIG"]))
        let path = fs.path("local/production/BIG")
        let bytes = try withTimeout(120, onTimeout: fs.abortConnection) { () throws -> [UInt8] in
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw FSError(code: errno) }
            defer { close(fd) }
            var out: [UInt8] = []
            out.reserveCapacity(size)
            var byte: UInt8 = 0
            while read(fd, &byte, 1) == 1 {
                out.append(byte)
                if out.count == 1000 {
                    try fixture.writeEncrypted("secrets.toml.age", "[production]\nBIG = \"\(second)\"\n")
                    // A new open already sees the new value while this handle is still open.
                    let fresh = try fs.read("local/production/BIG", timeout: 30)
                    if fresh.last != UInt8(ascii: "2") { throw TestFailure.message("new open did not see the change") }
                }
            }
            return out
        }
        #expect(bytes.count == size)
        #expect(bytes.dropLast().allSatisfy { $0 == UInt8(ascii: "a") } && bytes.last == UInt8(ascii: "1"))
    }

    @Test("a failing store answers EIO for its paths and names itself in the log; other stores keep serving")
    func brokenStoreIsolated() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        try fixture.writeEncrypted("tampered.toml.age", "[production]\nX = \"tampered-secret-value\"\n")
        var tampered = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture.dir.file("tampered.toml.age"))))
        tampered[tampered.count - 5] ^= 0x40
        try Data(tampered).write(to: URL(fileURLWithPath: fixture.dir.file("tampered.toml.age")))
        let other = Fixture.otherIdentity()
        _ = try fixture.dir.write("other.txt", other + "\n", mode: 0o600)
        let extra = """
            [stores.tampered]
            type = "file"
            files = ["tampered.toml.age"]
            identity = "identity.txt"

            [stores.wrongkey]
            type = "file"
            files = ["secrets.toml.age"]
            identity = "other.txt"
            """
        let fs = try fixture.mount(config: try fixture.writeConfig(extra: extra))
        #expect(try fs.list("") == ["local", "tampered", "wrongkey"])
        #expect(throws: FSError(code: EIO)) { try fs.list("tampered") }
        #expect(throws: FSError(code: EIO)) { try fs.read("tampered/production/X") }
        #expect(throws: FSError(code: EIO)) { try fs.read("wrongkey/production/PASSWORD") }
        #expect(try fs.readText("local/production/PASSWORD") == "0x1F")
        #expect(fs.log.contains("tampered") && fs.log.contains("wrongkey"))
        #expect(!fs.log.contains("tampered-secret-value"))
    }

    @Test("SIGTERM and SIGINT unmount cleanly with exit 0", arguments: [SIGTERM, SIGINT])
    func signals(signal: Int32) throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig())
        #expect(try fs.readText("local/production/PORT") == "1234")
        #expect(fs.signal(signal) == 0)
        #expect(!MountedSecretsFS.isMounted(fixture.mountpoint))
    }

    @Test("under systemd (NOTIFY_SOCKET): READY=1 once the mount is in place, STOPPING=1 after SIGTERM")
    func systemdNotify() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let socket = try NotifySocket(name: fixture.dir.file("notify.sock"))
        defer { socket.close() }
        // Wait for READY=1 on another thread and note whether the mount was there when it came.
        let mountpoint = fixture.mountpoint
        let heard = Locked<(String, Bool)?>(nil)
        let listener = Thread {
            if let message = try? socket.receive(timeout: 20) {
                heard.withLock { $0 = (message, MountedSecretsFS.isMounted(mountpoint)) }
            }
        }
        listener.start()
        let fs = try fixture.mount(config: try fixture.writeConfig(), environment: ["NOTIFY_SOCKET": socket.name])
        for _ in 0..<500 where heard.withLock({ $0 }) == nil { usleep(10_000) }
        let ready = try #require(heard.withLock { $0 })
        #expect(ready.0.split(separator: "\n").contains("READY=1"))
        #expect(ready.0.contains("STATUS=serving \(mountpoint)"))
        #expect(ready.1, "READY=1 came before the mount was in place")
        #expect(try fs.readText("local/production/PORT") == "1234")
        #expect(fs.signal(SIGTERM) == 0)
        #expect(try socket.receive(timeout: 10) == "STOPPING=1")
    }

    @Test("the daemon holds decrypted values, so it runs with a core-file limit of zero")
    func noCoreDumps() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig())
        #expect(try fs.readText("local/production/PORT") == "1234")
        let limits = try String(contentsOfFile: "/proc/\(fs.process.processIdentifier)/limits", encoding: .utf8)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }
        let fields = core.map { $0.split(separator: " ").dropFirst(4).prefix(2).map(String.init) }
        #expect(fields == ["0", "0"], "\(core ?? "no core limit line")")
    }

    @Test("a SIGKILLed daemon leaves no mount that hangs callers (auto_unmount)")
    func killedDaemon() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig())
        #expect(try fs.readText("local/production/PORT") == "1234")
        _ = fs.signal(SIGKILL)
        var mounted = true
        for _ in 0..<100 where mounted {
            mounted = MountedSecretsFS.isMounted(fixture.mountpoint)
            if mounted { usleep(50_000) }
        }
        #expect(!mounted)
        // The path answers at once (an empty directory), instead of hanging or ENOTCONN.
        #expect(try fs.list("", timeout: 5) == [])
    }

    @Test("an aborted connection ends the daemon (exit 1, the dead mount cleared) instead of restarting workers forever")
    func abortedConnection() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let fs = try fixture.mount(config: try fixture.writeConfig())
        #expect(try fs.readText("local/production/PORT") == "1234")
        fs.abortConnection()
        try waitUntil("the supervisor to exit after the abort", seconds: 20) { !fs.process.isRunning }
        #expect(fs.process.terminationStatus == 1)
        #expect(fs.log.contains("the FUSE connection ended (unmounted from outside, or aborted); exiting"))
        #expect(!fs.log.contains("worker died; starting another"), "no worker restarted on a dead connection")
        #expect(!MountedSecretsFS.isMounted(fixture.mountpoint))
    }

    @Test("a malformed config names file, line and problem, exits 2 and mounts nothing")
    func malformedConfig() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.dir.write(
            "bad.toml", "[mount]\npath = \"\(fixture.mountpoint)\"\n\n[stores.local]\ntype = \"file\"\nfiles = 5\n")
        let result = try fixture.cli(["mount", "--config", config])
        #expect(result.status == 2)
        #expect(result.stderr.contains("bad.toml:6:1"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("files"))
        #expect(!MountedSecretsFS.isMounted(fixture.mountpoint))

        let syntax = try fixture.dir.write("syntax.toml", "[mount]\npath = \"/x\"\nallow_other = yes\n")
        let parsed = try fixture.cli(["check", "--config", syntax])
        #expect(parsed.status == 2)
        #expect(parsed.stderr.contains("syntax.toml:3:"), "stderr: \(parsed.stderr)")
    }

    @Test("plaintext .secrets.toml: refused unless 0600 and owned by the daemon's user")
    func plaintextPermissions() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        _ = try fixture.dir.write(".secrets.toml", "[production]\nTOKEN = \"plain-token\"\n", mode: 0o644)
        let fs = try fixture.mount(config: try fixture.writeConfig(files: [".secrets.toml"], ttl: "0"))
        #expect(throws: FSError(code: EIO)) { try fs.read("local/production/TOKEN") }
        #expect(fs.log.contains("must be 0600 or stricter"))
        chmod(fixture.dir.file(".secrets.toml"), 0o600)
        #expect(try fs.readText("local/production/TOKEN") == "plain-token")
    }

    @Test("a scope layers several local files: the first that has the key wins")
    func scopeChain() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("platform.toml.age", "[default]\nA = \"platform\"\nB = \"platform\"\nC = \"platform\"\n")
        try fixture.writeEncrypted("project.toml.age", "[production]\nB = \"project\"\nC = \"project\"\n")
        try fixture.writeEncrypted("service.toml.age", "[production]\nC = \"service\"\n")
        // One path relative to the config file's folder, one absolute.
        let extra = """
            [scopes.billing]
            chain = [{ store = "local", path = "service.toml.age" },
                     { store = "local", path = "\(fixture.dir.file("project.toml.age"))" },
                     "local"]
            """
        let fs = try fixture.mount(config: try fixture.writeConfig(files: ["platform.toml.age"], extra: extra))
        #expect(try fs.list("billing/production") == ["A", "B", "C"])
        #expect(try fs.readText("billing/production/A") == "platform")
        #expect(try fs.readText("billing/production/B") == "project")
        #expect(try fs.readText("billing/production/C") == "service")
        // `local` alone has no production env: an env must exist somewhere in the top's chain.
        #expect(throws: FSError(code: ENOENT)) { try fs.list("local/production") }
        #expect(try fs.readText("local/default/C") == "platform")
        // The scope's own file is watched too: a cached key (ttl 5m) shows its change without waiting.
        try fixture.writeEncrypted("service.toml.age", "[production]\nC = \"service-2\"\n")
        #expect(try fs.readText("billing/production/C", until: "service-2", within: 2) == "service-2",
                "the scope's file was not watched")
    }

    @Test("JSON and YAML inner formats")
    func innerFormats() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("s.json.age", #"{"production": {"PORT": 5432, "NAME": "json-name", "F": 2.5}}"#)
        try fixture.writeEncrypted("s.yaml.age", "production:\n  NAME: yaml-name\n  LIST: [1, two]\n  ON: true\n")
        let fs = try fixture.mount(config: try fixture.writeConfig(files: ["s.json.age", "s.yaml.age"]))
        #expect(try fs.readText("local/production/PORT") == "5432")
        #expect(try fs.readText("local/production/F") == "2.5")
        #expect(try fs.readText("local/production/NAME") == "yaml-name")
        #expect(try fs.readText("local/production/LIST") == #"[1,"two"]"#)
        #expect(try fs.readText("local/production/ON") == "true")
        #expect(try fs.readText("local/production/NAME").utf8.count == "yaml-name".utf8.count)
    }
}

