import CLinux
import Foundation
import Testing
import TestSupport

/// `secretsfs run --watch` and `secretsfs watch` over real stores (age files with inotify, redis-server with
/// keyspace notifications, OpenBao with the metadata watch), no mount: commands restarted, signalled or ended on a
/// change, and version lines that never carry a value.
@Suite("run --watch and watch", .serialized)
struct RunWatchTests {
    /// A child that records its start (pid and value) in `out`, then sleeps (TERM ends it).
    static func recorder(_ out: String) -> [String] {
        ["/bin/sh", "-c", "echo \"start $$ $SECRET\" >> '\(out)'; exec sleep 600"]
    }

    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    static func waitForLines(_ path: String, _ count: Int, seconds: Double = 15) throws -> [String] {
        try waitUntil("\(count) lines in \(path)", seconds: seconds, every: 0.01) { lines(path).count >= count }
        return lines(path)
    }

    /// "start PID VALUE" → (pid, value).
    static func start(_ line: String) -> (pid: pid_t, value: String)? {
        let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "start", let pid = pid_t(parts[1]) else { return nil }
        return (pid, parts[2])
    }

    static func isGone(_ pid: pid_t) -> Bool { kill(pid, 0) != 0 }

    func runWatched(_ fixture: Fixture, config: String, top: String = "local", extra: [String] = [], child: [String]) throws
        -> RunningCommand
    {
        try RunningCommand(
            [fixture.binary, "run", "--config", config, "--watch", "--debounce", "200ms"] + extra
                + ["--secret", "SECRET=\(top)/production/PASSWORD", "--"] + child)
    }

    @Test("restart on a change of an age file (secretsfs set, inotify): the old command stops, the new one has the new value; a change of another key restarts nothing; SIGTERM to run ends the command and run exits with its status")
    func restartOnFileChange() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\nOTHER = \"o-1\"\n")
        let config = try fixture.writeConfig()
        let out = fixture.dir.file("starts.txt")
        let run = try runWatched(fixture, config: config, child: Self.recorder(out))
        defer { run.stop() }
        let first = try #require(Self.start(try Self.waitForLines(out, 1)[0]))
        #expect(first.value == "pw-1")
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=pw-2"]).status == 0)
        let second = try #require(Self.start(try Self.waitForLines(out, 2)[1]))
        #expect(second.value == "pw-2" && second.pid != first.pid && Self.isGone(first.pid))
        // Another key of the same file changes: nothing to do (the next start line is the next PASSWORD's).
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "OTHER=o-2"]).status == 0)
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=pw-3"]).status == 0)
        let third = try #require(Self.start(try Self.waitForLines(out, 3)[2]))
        #expect(third.value == "pw-3", "the change of OTHER restarted the command")
        #expect(run.stderr.contains { $0.contains("SECRET changed") })
        run.signal(SIGTERM)
        #expect(run.waitForExit() == 128 + SIGTERM, "run exits with the command's status (killed by TERM)")
        #expect(Self.isGone(third.pid))
        #expect(!run.stderr.joined().contains("pw-"), "no value in run's messages")
    }

    @Test("restart on a Redis HSET (keyspace notification) and on a bao kv put (metadata watch)")
    func restartOnRedisAndVault() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        let bao = try BaoServer()
        defer { bao.remove() }
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "r-1")])
        try bao.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=v-1"])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let config = try fixture.dir.write("stores.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [stores.redis]
            type = "redis"
            url = "\(redis.url)"
            [stores.vault]
            type = "vault"
            address = "\(bao.address)"
            token_file = "\(token)"
            watch = "500ms"
            """)
        for (top, change) in [
            ("redis", { () throws in try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "r-2")]) }),
            ("vault", { () throws in _ = try bao.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=v-2"]) }),
        ] as [(String, () throws -> Void)] {
            let out = fixture.dir.file("starts-\(top).txt")
            let run = try runWatched(fixture, config: config, top: top, child: Self.recorder(out))
            defer { run.stop() }
            let first = try #require(Self.start(try Self.waitForLines(out, 1)[0]))
            #expect(first.value == "\(top.prefix(1))-1")
            if top == "redis" { try redis.waitForPatternSubscriptions() }
            let changed = Date()
            try change()
            let second = try #require(Self.start(try Self.waitForLines(out, 2)[1]))
            print("run --watch, \(top): restarted \(String(format: "%.2f", Date().timeIntervalSince(changed))) s after the change (debounce 0.2 s)")
            #expect(second.value == "\(top.prefix(1))-2" && Self.isGone(first.pid), "\(top)")
            run.signal(SIGTERM)
            #expect(run.waitForExit() == 128 + SIGTERM)
        }
    }

    @Test("signal:HUP keeps the process; a command that ignores the stop signal gets SIGKILL after --grace; a change that leaves a secret missing keeps the old command; exit mode exits 75; a command's own exit status becomes run's")
    func modes() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\n")
        let config = try fixture.writeConfig()
        func set(_ value: String) throws {
            #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=\(value)"]).status == 0)
        }

        // signal:HUP: the same process gets the signal.
        let hupOut = fixture.dir.file("hup.txt")
        let hup = try runWatched(fixture, config: config, extra: ["--on-change", "signal:HUP"], child: [
            "/bin/sh", "-c", "trap 'echo hup $$ >> \(hupOut)' HUP; echo \"start $$ $SECRET\" >> '\(hupOut)'; while :; do sleep 0.05; done",
        ])
        defer { hup.stop() }
        let started = try #require(Self.start(try Self.waitForLines(hupOut, 1)[0]))
        try set("pw-2")
        let afterHup = try Self.waitForLines(hupOut, 2)
        #expect(afterHup[1] == "hup \(started.pid)" && afterHup.count == 2, "signalled, not restarted")
        hup.signal(SIGTERM)
        #expect(hup.waitForExit() == 128 + SIGTERM)

        // A command that traps TERM: SIGKILL after the grace, then the new one starts.
        let stubbornOut = fixture.dir.file("stubborn.txt")
        let stubborn = try runWatched(fixture, config: config, extra: ["--grace", "1s"], child: [
            "/bin/sh", "-c", "trap 'echo term >> \(stubbornOut)' TERM; echo \"start $$ $SECRET\" >> '\(stubbornOut)'; while :; do sleep 0.05; done",
        ])
        defer { stubborn.stop() }
        let old = try #require(Self.start(try Self.waitForLines(stubbornOut, 1)[0]))
        try set("pw-3")
        let stubbornLines = try Self.waitForLines(stubbornOut, 3)
        #expect(stubbornLines[1] == "term", "the stop signal came first")
        let new = try #require(Self.start(stubbornLines[2]))
        #expect(new.value == "pw-3" && Self.isGone(old.pid), "killed after the grace, then started again")

        // The key goes: the command keeps running; it comes back with a new value: restarted with it.
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nOTHER = \"x\"\n")
        try stubborn.waitForStderr("keeps running with the values it has")
        #expect(!Self.isGone(new.pid) && Self.lines(stubbornOut).count == 3)
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-4\"\n")
        let back = try #require(Self.start(try Self.waitForLines(stubbornOut, 5)[4]))
        #expect(back.value == "pw-4")
        stubborn.stop()

        // exit: the command is stopped and run exits 75.
        let exitOut = fixture.dir.file("exit.txt")
        let exiting = try runWatched(fixture, config: config, extra: ["--on-change", "exit"], child: Self.recorder(exitOut))
        defer { exiting.stop() }
        let last = try #require(Self.start(try Self.waitForLines(exitOut, 1)[0]))
        try set("pw-5")
        #expect(exiting.waitForExit() == 75)
        #expect(Self.isGone(last.pid) && Self.lines(exitOut).count == 1)

        // The command's own exit status is run's.
        let own = try runWatched(fixture, config: config, child: ["/bin/sh", "-c", "exit 7"])
        defer { own.stop() }
        #expect(own.waitForExit() == 7)
        for command in [hup, stubborn, exiting, own] { #expect(!command.stderr.joined().contains("pw-")) }
        let missing = try fixture.cli(["run", "--config", config, "--watch", "--secret", "SECRET=local/production/PASSWORD", "--", "/nonexistent/cmd"])
        #expect(missing.status == 127, "a command that is not there: \(missing.status)")
    }

    @Test("secretsfs watch: one line per change (path, old and new version; - for a path not there), never a value")
    func watchLines() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\n")
        let config = try fixture.writeConfig()
        let watch = try RunningCommand([fixture.binary, "watch", "--config", config, "local/production/PASSWORD", "local/production"])
        defer { watch.stop() }
        try watch.waitForStderr("watching 1 paths")
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=pw-2"]).status == 0)
        try watch.waitForStdout(lines: 1)
        let changed = watch.stdout[0].split(separator: " ").map(String.init)
        #expect(changed.count == 3 && changed[0] == "local/production/PASSWORD" && changed[1] != changed[2])
        #expect(changed.dropFirst().allSatisfy { $0.count == 16 && $0.allSatisfy(\.isHexDigit) }, "\(watch.stdout)")
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "NEW=n-1"]).status == 0)
        try watch.waitForStdout(lines: 2)
        let added = watch.stdout[1].split(separator: " ").map(String.init)
        #expect(added.count == 3 && added[0] == "local/production/NEW" && added[1] == "-")
        #expect(!(watch.stdout + watch.stderr).joined().contains("pw-") && !(watch.stdout + watch.stderr).joined().contains("n-1"))
        let missing = try fixture.cli(["watch", "--config", config, "nope/production"])
        #expect(missing.status == 3 && missing.stderr.contains("no store or scope named 'nope'"))
        let malformed = try fixture.cli(["watch", "--config", config, "local"])
        #expect(malformed.status == 2)
    }

    @Test("on the mount: user.secretsfs.version and mtime follow a change, stay the same across a worker restart, and listxattr names the attributes")
    func versionAttribute() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nPASSWORD = \"pw-1\"\n")
        let config = try fixture.writeConfig(ttl: "10m")
        let fs = try fixture.mount(config: config)
        func version() throws -> String? { try fs.attribute("local/production/PASSWORD", "user.secretsfs.version") }
        #expect(try fs.readText("local/production/PASSWORD") == "pw-1")
        let first = try #require(try version())
        #expect(first.count == 16 && first.allSatisfy(\.isHexDigit))
        let firstStatus = try fs.status("local/production/PASSWORD")
        let names = try withTimeout(10, onTimeout: fs.abortConnection) { () -> String in
            var buffer = [CChar](repeating: 0, count: 256)
            let count = listxattr(fs.path("local/production/PASSWORD"), &buffer, buffer.count)
            return count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        }
        #expect(names == "user.secretsfs.source\0user.secretsfs.version\0")
        // A worker restart keeps the node, so the version is the same.
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        #expect(try version() == first)
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=pw-2"]).status == 0)
        try waitUntil("the version follows the change", seconds: 10) { ((try? version()) ?? first) != first }
        let changed = try fs.status("local/production/PASSWORD")
        #expect(changed.st_ino != firstStatus.st_ino, "a changed value is a new inode")
        #expect(changed.st_mtim.tv_sec * 1_000_000_000 + changed.st_mtim.tv_nsec
            > firstStatus.st_mtim.tv_sec * 1_000_000_000 + firstStatus.st_mtim.tv_nsec, "mtime follows the change")
        #expect(changed.st_ctim.tv_sec == changed.st_mtim.tv_sec)
        #expect(!fs.log.contains("pw-"))
    }
}
