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
        var seen: [(Int32, UInt32)] = []
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !until(seen), Date() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 50) > 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { continue }
            var offset = 0
            while offset + 16 <= count {
                let wd = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset, as: Int32.self) }
                let mask = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = buffer.withUnsafeBytes { $0.load(fromByteOffset: offset + 12, as: UInt32.self) }
                seen.append((wd, mask))
                offset += 16 + Int(length)
            }
        }
        return seen
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
        let sorted = latencies.sorted()
        if !sorted.isEmpty {
            print("inotify file watch: \(sorted.count) of 50 rotations seen; HSET to IN_DELETE_SELF p50 \(String(format: "%.1f", sorted[sorted.count / 2] * 1000)) ms, max \(String(format: "%.1f", (sorted.last ?? 0) * 1000)) ms")
        }

        // The real tool: inotifywait on the file, one rotation.
        let waiter = try RunningCommand(["inotifywait", "-e", "delete_self", "--timeout", "20", path])
        defer { waiter.stop() }
        try waiter.waitForStderr("Watches established")
        try redis.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v-last")])
        #expect(waiter.waitForExit() == 0, "inotifywait: \(waiter.stderr)")
        #expect(waiter.stdout.contains { $0.contains("DELETE_SELF") }, "\(waiter.stdout)")
    }
}
