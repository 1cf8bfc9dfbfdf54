import Foundation
import Testing
import TestSupport

/// Two faults at once: a backend outage and a worker crash. The next worker starts with the previous one's cached
/// views and listings (an encrypted snapshot in a memfd the supervisor passes on and never reads), so within
/// `stale_if_error` cached keys keep serving though the worker that fetched them is gone.
@Suite("last-known-good across workers", .serialized)
struct LastKnownGoodTests {
    @Test("Vault and Redis frozen, the worker SIGKILLed: cached keys and listings still served, fresh keys EIO within timeout")
    func crashDuringOutage() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        let redis = try RedisServer()
        defer { redis.remove() }
        try bao.cli(["kv", "put", "secret/dynaconf/production", "NAME=v-name", "OTHER=v-other", "DB_PASS=v-fresh"])
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "r-name"), ("OTHER", "r-other"), ("DB_PASS", "r-fresh")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeTwoBackendConfig(bao: bao, redis: redis, cache: "ttl = \"10m\"\nstale_if_error = \"10m\"")
        let fs = try fixture.mount(config: config)
        // One key of each env read (its whole view is cached); OTHER is never looked up before the crash, so the
        // kernel has no name or page of it: the next worker must answer it.
        #expect(try fs.readText("vault/production/NAME") == "v-name")
        #expect(try fs.readText("redis/production/NAME") == "r-name")
        #expect(Set(try fs.list("vault")).contains("production"))
        bao.pause()
        defer { bao.resume() }
        redis.pause()
        defer { redis.resume() }
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        #expect(fs.log.contains("took over the previous worker's cached views"))
        for (path, value) in [("vault/production/OTHER", "v-other"), ("redis/production/OTHER", "r-other"),
                              ("vault/production/NAME", "v-name"), ("redis/production/NAME", "r-name")] {
            #expect(try fs.readText(path, timeout: 10) == value, "\(path) after the crash, backends frozen")
        }
        #expect(Set(try fs.list("vault/production")) == ["DB_PASS", "NAME", "OTHER"])
        #expect(Set(try fs.list("redis")).contains("production"))
        for path in ["vault/production/DB_PASS", "redis/production/DB_PASS"] {
            let started = Date()
            do {
                _ = try fs.readText(path, timeout: 10)
                Issue.record("\(path): a fresh key read from a frozen backend")
            } catch let error as FSError {
                #expect(error.code == EIO, "\(path): \(error)")
            }
            #expect(Date().timeIntervalSince(started) < 1.1, "\(path): fresh read waited past the timeout")
        }
        #expect(!fs.log.contains("v-other") && !fs.log.contains("r-name"))
    }
}
