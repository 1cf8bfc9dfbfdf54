import Foundation
import TestSupport

/// A backend's own failover under a reader of a fresh key, through a real mount: a three-node OpenBao cluster whose
/// active node is SIGKILLed, and a Redis master SIGKILLed behind three sentinels. Prints the time from the kill to
/// the first successful fresh read after it, how long until the backend had a new active node / master, and the
/// fresh reads that failed in between. Uses the test harness's clusters (real servers, stopped by PID).
enum BackendFailoverBench {
    /// Reads `path` in a loop; returns (time of the first success after `after`, failures after `after`).
    final class Reader: @unchecked Sendable {
        let lock = NSLock()
        var log: [(Date, Bool)] = []
        var running = true
        let done = DispatchSemaphore(value: 0)

        init(path: String) {
            Thread { [self] in
                var buffer = [UInt8](repeating: 0, count: 4096)
                while lock.withLock({ running }) {
                    let fd = open(path, O_RDONLY)
                    var ok = false
                    if fd >= 0 {
                        ok = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } > 0
                        close(fd)
                    }
                    lock.withLock { log.append((Date(), ok)) }
                    usleep(5_000)
                }
                done.signal()
            }.start()
        }

        func finish(after: Date) -> (firstSuccess: Date?, failures: Int, reads: Int) {
            lock.withLock { running = false }
            _ = done.wait(timeout: .now() + 20)
            let later = lock.withLock { log.filter { $0.0 > after } }
            return (later.first { $0.1 }?.0, later.filter { !$0.1 }.count, later.count)
        }
    }

    /// Mounts store `name` (`store`: its table's keys) with DB_* fresh and runs `body` with the mount point.
    static func withMount(binary: String, root: String, name: String, store: String, _ body: (String) throws -> Void) rethrows {
        let mountpoint = root + "/mnt-ha-" + name
        let config = root + "/ha-\(name).toml"
        let text = """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            fresh = ["DB_*"]
            [stores.\(name)]
            \(store)
            """
        try? text.write(toFile: config, atomically: true, encoding: .utf8)
        var failure: (any Error)?
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: mountpoint + "/\(name)/production/DB_PASS") { _ in
            do { try body(mountpoint) } catch { failure = error }
        }
        if let failure { print("  \(name): \(failure)") }
    }

    static func report(_ what: String, killed: Date, recovered: Date?, result: (firstSuccess: Date?, failures: Int, reads: Int)) {
        let first = result.firstSuccess.map { fmt($0.timeIntervalSince(killed) * 1000, 0) + " ms" } ?? "never"
        let backend = recovered.map { fmt($0.timeIntervalSince(killed) * 1000, 0) + " ms" } ?? "not seen"
        print("  \(what): first fresh read after the kill \(first); backend failover \(backend); failed fresh reads \(result.failures) of \(result.reads)")
    }

    static func run(binary: String, root: String) {
        print("backend failover (a reader of a fresh key every 5 ms through the mount):")
        do {
            let cluster = try BaoCluster()
            defer { cluster.remove() }
            guard let leader = cluster.active() else { throw TestFailure.message("no active node") }
            try cluster.cli(leader, ["kv", "put", "secret/dynaconf/production", "DB_PASS=bench"])
            let token = root + "/ha-token"
            try (cluster.rootToken + "\n").write(toFile: token, atomically: true, encoding: .utf8)
            chmod(token, 0o600)
            let order = [leader] + cluster.nodes.filter { $0 !== leader }
            let store = "type = \"vault\"\naddresses = [\(order.map { "\"\($0.address)\"" }.joined(separator: ", "))]\ntoken_file = \"\(token)\"\ntimeout = \"2s\""
            withMount(binary: binary, root: root, name: "vault", store: store) { mountpoint in
                let reader = Reader(path: mountpoint + "/vault/production/DB_PASS")
                usleep(500_000)
                let killed = Date()
                leader.stop(SIGKILL)
                let elected = (try? cluster.waitForNewLeader(after: leader)).map { _ in Date() }
                usleep(1_000_000)
                report("OpenBao, active node SIGKILLed (3-node Raft)", killed: killed, recovered: elected, result: reader.finish(after: killed))
            }
        } catch {
            print("  OpenBao cluster: skipped (\(error))")
        }
        do {
            let set = try RedisSentinelSet()
            defer { set.remove() }
            try set.master.hset("DYNACONF_PRODUCTION", [("DB_PASS", "bench")])
            _ = try set.master.cli(["WAIT", "1", "2000"])
            withMount(binary: binary, root: root, name: "redis", store: "type = \"redis\"\nurl = \"\(set.url)\"\ntimeout = \"1s\"") { mountpoint in
                let reader = Reader(path: mountpoint + "/redis/production/DB_PASS")
                usleep(500_000)
                let killed = Date()
                set.master.crash()
                let promoted = (try? set.waitForPromotion()).map { _ in Date() }
                usleep(1_000_000)
                report("Redis, master SIGKILLed (1 replica, 3 sentinels, down-after 1 s)", killed: killed, recovered: promoted, result: reader.finish(after: killed))
            }
        } catch {
            print("  Redis Sentinel: skipped (\(error))")
        }
    }
}
