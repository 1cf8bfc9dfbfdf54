import Foundation
import Testing
import TestSupport

/// Redis behind Sentinel, for real: a master, a replica and three sentinels; the master dies under readers of a
/// real mount and Sentinel promotes the replica.
@Suite("Redis Sentinel", .serialized)
struct SentinelTests {
    @Test("the master is killed: cached reads never fail, fresh reads recover without a restart, a change on the new master arrives by notice, `secretsfs write` lands there")
    func masterFailover() throws {
        let set = try RedisSentinelSet()
        defer { set.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try set.master.hset("DYNACONF_PRODUCTION", [("DB_PASS", "s-1"), ("NAME", "cached-1")])
        try set.master.hset("DYNACONF_DEFAULT", [("PORT", "@int 6379")])
        // Replicated before the master goes.
        _ = try set.master.cli(["WAIT", "1", "2000"])
        let config = try fixture.dir.write(
            "sentinel.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            stale_if_error = "10m"
            [stores.redis]
            type = "redis"
            url = "\(set.url)"
            fresh = ["DB_*"]
            timeout = "1s"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/DB_PASS") == "s-1")
        #expect(try fs.readText("redis/production/NAME") == "cached-1")
        #expect(try fs.readText("redis/production/PORT") == "6379")
        let reader = LoopReader(fs, paths: ["redis/production/DB_PASS", "redis/production/NAME"])
        try reader.waitForReads()
        let killed = Date()
        set.master.crash()
        try set.waitForPromotion()
        let promoted = Date()
        // Written to the new master: a fresh key on the next read, a cached one by change notice (ttl is 10 min).
        try set.replica.hset("DYNACONF_PRODUCTION", [("DB_PASS", "s-2"), ("NAME", "cached-2")])
        let freshSeen = reader.waitFor("redis/production/DB_PASS", text: "s-2", since: promoted, seconds: 10)
        let noticeSeen = reader.waitFor("redis/production/NAME", text: "cached-2", since: promoted, seconds: 10)
        let outcomes = reader.stop()
        #expect(freshSeen != nil, "fresh reads recover on the new master without a restart")
        #expect(noticeSeen != nil, "the cached key changed on the new master arrives by notice, well before ttl")
        let cached = outcomes.filter { $0.path.hasSuffix("NAME") }
        #expect(cached.count > 10 && cached.allSatisfy { $0.text != nil }, "cached reads: \(cached.filter { $0.text == nil }.count) failed")
        let fresh = outcomes.filter { $0.path.hasSuffix("DB_PASS") }
        let failed = fresh.filter { $0.text == nil }
        // While no master answers, the replicas the sentinels list (or listed last, while the one being promoted
        // shows as disconnected) serve fresh reads, retried within the timeout (replica_reads = "failover").
        #expect(failed.isEmpty, "\(failed.count) of \(fresh.count) fresh reads failed during the failover, at \(failed.map { String(format: "%.2f s", $0.at.timeIntervalSince(killed)) }) after the kill")
        if !failed.isEmpty { print("sentinel logs:\n\(set.debugLogs())") }
        #expect(fs.log.components(separatedBy: "reads go to a replica until it answers").count - 1 == 1, "said once per failover")
        print("master killed: promoted after \(String(format: "%.1f", promoted.timeIntervalSince(killed))) s; \(failed.count) of \(fresh.count) fresh reads failed; \(cached.count) cached reads, none failed; notice seen \(String(format: "%.2f", (noticeSeen ?? promoted).timeIntervalSince(promoted))) s after the write")
        // A write after the failover goes to the new master.
        let write = try fixture.cli(["write", "--config", config, "redis", "-e", "production", "DB_PASS=s-3"])
        #expect(write.status == 0, "write: \(write.stderr)")
        #expect(try set.replica.cli(["HGET", "DYNACONF_PRODUCTION", "DB_PASS"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "s-3")
        #expect(try fs.readText("redis/production/DB_PASS") == "s-3")
        #expect(fs.log.contains("the Redis master moved"))
        #expect(!fs.log.contains("s-1") && !fs.log.contains("cached-1") && !fs.log.contains("s-2"))
    }

    @Test("sentinels with their own password: read through them with sentinel_password_file; without it, a clear error")
    func sentinelPassword() throws {
        let set = try RedisSentinelSet(sentinelPassword: "sentinel-pw")
        defer { set.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try set.master.hset("DYNACONF_PRODUCTION", [("DB_PASS", "behind-auth")])
        let passwordFile = try fixture.dir.write("sentinel-password", "sentinel-pw\n")
        func config(_ extra: String) throws -> String {
            try fixture.dir.write("s.toml", "[stores.redis]\ntype = \"redis\"\nurl = \"\(set.url)\"\ntimeout = \"1s\"\n\(extra)\n")
        }
        let good = try fixture.cli(["get", "--config", try config("sentinel_password_file = \"\(passwordFile)\""), "redis/production/DB_PASS"])
        #expect(good.status == 0 && good.stdoutText == "behind-auth", "\(good.stderr)")
        let refused = try fixture.cli(["get", "--config", try config(""), "redis/production/DB_PASS"])
        #expect(refused.status != 0 && refused.stderr.contains("no master 'mymaster' from the sentinels") && refused.stderr.contains("NOAUTH"), "\(refused.stderr)")
        #expect(!good.stderr.contains("sentinel-pw") && !refused.stderr.contains("sentinel-pw"))
    }

    @Test("Sentinel URLs: parsed, and a bad one is a config error naming file:line:column")
    func urls() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        for (url, problem) in [
            ("redis+sentinel://127.0.0.1:26379", "the master's name is missing"),
            ("redis+sentinel://127.0.0.1:99999/m/0", "bad sentinel port"),
            ("redis+sentinel://127.0.0.1:26379,/m/0", "an empty sentinel address"),
            ("redis+sentinel://h:1/m/x", "database must be a number"),
        ] {
            let config = try fixture.dir.write("bad.toml", "[mount]\npath = \"/tmp/x\"\n\n[stores.r]\ntype = \"redis\"\nurl = \"\(url)\"\n")
            let result = try fixture.cli(["check", "--config", config])
            #expect(result.status == 2, "\(url)")
            #expect(result.stderr.contains("bad.toml:6:1:") && result.stderr.contains(problem), "\(url): \(result.stderr)")
        }
        let passwordWithoutSentinel = try fixture.dir.write(
            "bad2.toml", "[mount]\npath = \"/tmp/x\"\n[stores.r]\ntype = \"redis\"\nurl = \"redis://h:1/0\"\nsentinel_password_file = \"p\"\n")
        let result = try fixture.cli(["check", "--config", passwordWithoutSentinel])
        #expect(result.status == 2 && result.stderr.contains("bad2.toml:6:") && result.stderr.contains("redis+sentinel://"))
    }
}
