import Foundation
import Testing
import TestSupport

/// inotify watchers on mounted files see rotations: a changed value unlinks the old node (FUSE_NOTIFY_DELETE), so a
/// watch on the file gets IN_DELETE_SELF then IN_IGNORED (Go fsnotify's Remove; the watcher adds the path again).
@Suite("inotify watchers", .serialized)
struct InotifyTests {
    /// Go fsnotify's names for the inotify masks it maps (inotify backend).
    static func fsnotifyOps(_ mask: UInt32) -> [String] {
        var ops: [String] = []
        if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 { ops.append("Create") }
        if mask & UInt32(IN_DELETE_SELF | IN_DELETE) != 0 { ops.append("Remove") }
        if mask & UInt32(IN_MODIFY) != 0 { ops.append("Write") }
        if mask & UInt32(IN_MOVE_SELF | IN_MOVED_FROM) != 0 { ops.append("Rename") }
        if mask & UInt32(IN_ATTRIB) != 0 { ops.append("Chmod") }
        return ops
    }

    /// The (watch, mask) pairs read from an inotify fd within `seconds`, stopping once `until` holds.
    static func events(_ fd: Int32, seconds: Double, until: ([(Int32, UInt32)]) -> Bool) -> [(Int32, UInt32)] {
        namedEvents(fd, seconds: seconds) { events in until(events.map { ($0.wd, $0.mask) }) }.map { ($0.wd, $0.mask) }
    }

    @Test("a watch on a file sees every one of 50 rotations (Redis HSETs) as IN_DELETE_SELF then IN_IGNORED, Go fsnotify's Remove; the path read after the event has the new value; inotifywait on the file sees DELETE_SELF")
    func fileWatchSeesRotations() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-0")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeRedisConfig(redis)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/PASSWORD") == "v-0")
        try redis.waitForPatternSubscriptions()
        let path = fs.path("redis/production/PASSWORD")
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        try #require(fd >= 0)
        defer { close(fd) }
        var latencies: [Double] = []
        var missed: [Int] = []
        for rotation in 1...50 {
            // As a watcher does after a Remove: watch the path again (a lookup of the current node).
            let wd = try withTimeout(10, onTimeout: fs.abortConnection) {
                inotify_add_watch(fd, path, UInt32(IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_CLOSE_WRITE))
            }
            try #require(wd >= 0, "inotify_add_watch: errno \(errno)")
            let changed = Date()
            try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-\(rotation)")])
            let seen = Self.events(fd, seconds: 10) { events in events.contains { $0.0 == wd && $0.1 & UInt32(IN_IGNORED) != 0 } }
            let mine = seen.filter { $0.0 == wd }
            guard let deleted = mine.firstIndex(where: { $0.1 & UInt32(IN_DELETE_SELF) != 0 }) else {
                missed.append(rotation)
                inotify_rm_watch(fd, wd)
                continue
            }
            latencies.append(Date().timeIntervalSince(changed))
            #expect(Self.fsnotifyOps(mine[deleted].1) == ["Remove"])
            #expect(mine.last.map { $0.1 & UInt32(IN_IGNORED) != 0 } == true, "IN_IGNORED ends the watch")
            #expect(try fs.readText("redis/production/PASSWORD") == "v-\(rotation)", "after the event, the new value")
        }
        #expect(missed.isEmpty, "rotations with no IN_DELETE_SELF: \(missed)")
        Self.report("inotify file watch", latencies, of: "rotations", event: "IN_DELETE_SELF")

        // The real tool: inotifywait on the file, one rotation.
        let waiter = try RunningCommand(["inotifywait", "-e", "delete_self", "--timeout", "20", path])
        defer { waiter.stop() }
        try waiter.waitForStderr("Watches established")
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-last")])
        #expect(waiter.waitForExit() == 0, "inotifywait: \(waiter.stderr)")
        #expect(waiter.stdout.contains { $0.contains("DELETE_SELF") }, "\(waiter.stdout)")
    }

    /// Prints how many of 50 changes were seen and how long after the HSET (p50, max); never asserted on.
    static func report(_ label: String, _ latencies: [Double], of what: String, event: String) {
        let sorted = latencies.sorted()
        guard let last = sorted.last else { return }
        let p50 = String(format: "%.1f", sorted[sorted.count / 2] * 1000)
        print("\(label): \(sorted.count) of 50 \(what) seen; HSET to \(event) p50 \(p50) ms, max \(String(format: "%.1f", last * 1000)) ms")
    }

    /// (watch, mask, name) triples read from an inotify fd within `seconds`, stopping once `until` holds.
    static func namedEvents(
        _ fd: Int32, seconds: Double, until: ([(wd: Int32, mask: UInt32, name: String)]) -> Bool
    ) -> [(wd: Int32, mask: UInt32, name: String)] {
        var seen: [(wd: Int32, mask: UInt32, name: String)] = []
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 8192)
        while !until(seen), Date() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 20) > 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { continue }
            var offset = 0
            while offset + 16 <= count {
                let wd = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset, as: Int32.self) }
                let mask = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = Int(buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 12, as: UInt32.self) })
                let raw = buffer[(offset + 16)..<min(offset + 16 + length, count)]
                seen.append((wd, mask, String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)))
                offset += 16 + length
            }
        }
        return seen
    }

    @Test("with directory_events, a watch on the directory sees every one of 50 rotations (Redis HSETs) as IN_MODIFY and IN_CLOSE_WRITE of the name (Go fsnotify's Write), a new key as IN_MODIFY of the directory and of its name; inotifywait -m and Python watchdog on the directory see them; every other caller's change is refused, root's too")
    func directoryWatchSeesRotations() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-0"), ("USER", "app")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeRedisConfig(redis, mount: "directory_events = true")
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/PASSWORD") == "v-0")
        try redis.waitForPatternSubscriptions()
        let directory = fs.path("redis/production")
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        try #require(fd >= 0)
        defer { close(fd) }
        let all = UInt32(IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM)
        let wd = try withTimeout(10, onTimeout: fs.abortConnection) { inotify_add_watch(fd, directory, all) }
        try #require(wd >= 0, "inotify_add_watch: errno \(errno)")
        var latencies: [Double] = []
        var missed: [Int] = []
        for rotation in 1...50 {
            let changed = Date()
            try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-\(rotation)")])
            let seen = Self.namedEvents(fd, seconds: 10) { events in
                events.contains { $0.name == "PASSWORD" && $0.mask & UInt32(IN_CLOSE_WRITE) != 0 }
            }
            let named = seen.filter { $0.wd == wd && $0.name == "PASSWORD" }
            guard named.contains(where: { $0.mask & UInt32(IN_MODIFY) != 0 }) else {
                missed.append(rotation)
                continue
            }
            latencies.append(Date().timeIntervalSince(changed))
            #expect(named.flatMap { Self.fsnotifyOps($0.mask) }.contains("Write"))
            #expect(!seen.contains { $0.name == "USER" }, "only the changed name: \(seen.map(\.name))")
            #expect(try fs.readText("redis/production/PASSWORD") == "v-\(rotation)", "after the event, the new value")
        }
        #expect(missed.isEmpty, "rotations with no IN_MODIFY of the name: \(missed)")
        Self.report("inotify directory watch", latencies, of: "rotations", event: "IN_CLOSE_WRITE")

        // A key that appears: the directory itself, and the new name.
        try redis.hset("DYNACONF_PRODUCTION", [("TOKEN", "t-1")])
        let added = Self.namedEvents(fd, seconds: 10) { events in
            events.contains { $0.name == "TOKEN" && $0.mask & UInt32(IN_MODIFY) != 0 }
                && events.contains { $0.name.isEmpty && $0.mask & UInt32(IN_MODIFY) != 0 }
        }
        #expect(added.contains { $0.name == "TOKEN" && $0.mask & UInt32(IN_MODIFY) != 0 }, "\(added)")
        #expect(added.contains { $0.name.isEmpty && $0.mask & UInt32(IN_MODIFY | IN_ISDIR) == UInt32(IN_MODIFY | IN_ISDIR) }, "\(added)")

        // Everyone else, root included, changes nothing: the mount is writable at the kernel only for the daemon.
        let file = fs.path("redis/production/PASSWORD")
        for command in [
            ["touch", file], ["sh", "-c", "echo x > \(file)"], ["truncate", "-s", "0", file], ["rm", "-f", file],
            ["mkdir", directory + "/NEW"], ["mv", file, directory + "/MOVED"], ["chmod", "0777", file],
            ["ln", "-s", "x", directory + "/LINK"],
            [packageRoot() + "/.venv/bin/python", "-c", "import os, sys; os.setxattr(sys.argv[1], \"user.x\", b\"1\")", file],
        ] {
            let result = try run(command, timeout: 10)
            #expect(result.status != 0, "\(command) succeeded")
            #expect(result.stderr.contains("Read-only file system"), "\(command): \(result.stderr)")
        }
        #expect(try fs.readText("redis/production/PASSWORD") == "v-50")
        let stray = Self.namedEvents(fd, seconds: 0.3) { _ in false }
        // (An open for writing is not refused until it writes: root's open and close show as IN_CLOSE_WRITE.)
        #expect(!stray.contains { $0.mask & UInt32(IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_TO) != 0 },
            "refused changes raise no change events: \(stray)")

        // The real tools: inotifywait -m on the directory, and Python watchdog (inotify backend).
        let waiter = try RunningCommand(["inotifywait", "-m", "-e", "modify", "-e", "close_write", directory])
        defer { waiter.stop() }
        try waiter.waitForStderr("Watches established")
        let script = """
            import sys, time
            from watchdog.observers.inotify import InotifyObserver
            from watchdog.events import FileSystemEventHandler
            class Printer(FileSystemEventHandler):
                def on_any_event(self, event):
                    print(type(event).__name__, event.src_path, flush=True)
            observer = InotifyObserver()
            observer.schedule(Printer(), sys.argv[1])
            observer.start()
            print("watching", file=sys.stderr, flush=True)
            time.sleep(60)
            """
        let watchdog = try RunningCommand([packageRoot() + "/.venv/bin/python", "-u", "-c", script, directory])
        defer { watchdog.stop() }
        try watchdog.waitForStderr("watching")
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-last")])
        try waitUntil("inotifywait sees MODIFY and CLOSE_WRITE of PASSWORD (\(waiter.stdout))", seconds: 10, every: 0.01) {
            waiter.stdout.contains { $0.contains("MODIFY PASSWORD") } && waiter.stdout.contains { $0.contains("CLOSE_WRITE,CLOSE PASSWORD") }
        }
        try waitUntil("watchdog sees FileModifiedEvent of PASSWORD (\(watchdog.stdout))", seconds: 10, every: 0.01) {
            watchdog.stdout.contains { $0 == "FileModifiedEvent \(file)" }
        }
        #expect(watchdog.stdout.contains { $0 == "FileClosedEvent \(file)" }, "\(watchdog.stdout)")
        #expect(try fs.readText("redis/production/PASSWORD") == "v-last")
        #expect(!(waiter.stdout + watchdog.stdout + [fs.log]).contains { $0.contains("v-last") }, "a value in output")
    }

    @Test("layout = \"kubernetes\": ..data is a symlink to the directory (unlisted), swapped at each of 50 rotations as kubelet's AtomicWriter does (IN_CREATE ..data_tmp, IN_MOVED_TO ..data: configmap-reload's Create of ..data, Envoy's moved_to), the new value read through ..data after the event; nobody else may make or move it; without directory_events the config is refused")
    func kubernetesLayoutSwapsData() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-0")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let refused = try fixture.writeRedisConfig(redis, store: "layout = \"kubernetes\"")
        let check = try fixture.cli(["check", "--config", refused])
        #expect(check.status == 2)
        #expect(check.stderr.contains("redis.toml:") && check.stderr.contains("needs directory_events = true"), "\(check.stderr)")
        let config = try fixture.writeRedisConfig(redis, store: "layout = \"kubernetes\"", mount: "directory_events = true")
        let fs = try fixture.mount(config: config)
        let directory = fs.path("redis/production")
        #expect(try fs.readText("redis/production/..data/PASSWORD") == "v-0")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: directory + "/..data") == ".")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["PASSWORD"], "..data is not listed")
        try redis.waitForPatternSubscriptions()
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        try #require(fd >= 0)
        defer { close(fd) }
        let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE)
        let wd = try withTimeout(10, onTimeout: fs.abortConnection) { inotify_add_watch(fd, directory, mask) }
        try #require(wd >= 0, "inotify_add_watch: errno \(errno)")
        var latencies: [Double] = []
        var missed: [Int] = []
        for rotation in 1...50 {
            let changed = Date()
            try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-\(rotation)")])
            let seen = Self.namedEvents(fd, seconds: 10) { events in
                events.contains { $0.name == "..data" && $0.mask & UInt32(IN_MOVED_TO) != 0 }
            }
            // configmap-reload: a Create (IN_CREATE or IN_MOVED_TO, Go fsnotify) whose base name is ..data.
            guard seen.contains(where: { $0.name == "..data" && Self.fsnotifyOps($0.mask).contains("Create") }) else {
                missed.append(rotation)
                continue
            }
            latencies.append(Date().timeIntervalSince(changed))
            #expect(seen.contains { $0.name == "..data_tmp" && $0.mask & UInt32(IN_CREATE) != 0 }, "\(seen)")
            #expect(try fs.readText("redis/production/..data/PASSWORD") == "v-\(rotation)", "after the swap, the new value")
        }
        #expect(missed.isEmpty, "rotations with no IN_MOVED_TO ..data: \(missed)")
        Self.report("kubernetes layout", latencies, of: "swaps", event: "IN_MOVED_TO ..data")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: directory + "/..data") == ".")

        for command in [
            ["ln", "-s", ".", directory + "/..data_tmp"], ["ln", "-sfn", "/etc", directory + "/..data"],
            ["mv", "-T", directory + "/..data", directory + "/..old"], ["rm", "-f", directory + "/..data"],
        ] {
            let result = try run(command, timeout: 10)
            #expect(result.status != 0 && result.stderr.contains("Read-only file system"), "\(command): \(result.stderr)")
        }
        #expect(try fs.readText("redis/production/..data/PASSWORD") == "v-50")

        // A worker crash: the next worker serves ..data (its own node) and swaps it at the next change.
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        #expect(try fs.readText("redis/production/..data/PASSWORD") == "v-50")
        try redis.waitForPatternSubscriptions()

        // Envoy's style: inotifywait for moved_to in the directory.
        let waiter = try RunningCommand(["inotifywait", "-e", "moved_to", "--timeout", "20", directory])
        defer { waiter.stop() }
        try waiter.waitForStderr("Watches established")
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-last")])
        #expect(waiter.waitForExit() == 0, "inotifywait: \(waiter.stderr)")
        #expect(waiter.stdout.contains { $0.contains("MOVED_TO ..data") }, "\(waiter.stdout)")
        #expect(try fs.readText("redis/production/PASSWORD") == "v-last")
        #expect(!fs.log.contains("v-last"), "a value in the log")
    }
}
