import Age
import Foundation
import Testing
import TestSupport

/// Two faults at once: a backend outage and a worker crash. The next worker starts with the previous one's cached
/// views and listings (an encrypted snapshot in a memfd the supervisor passes on and never reads), so within
/// `stale_if_error` cached keys keep serving though the worker that fetched them is gone.
@Suite("last-known-good across workers", .serialized)
struct LastKnownGoodTests {
    /// A Vault and a Redis server, each with production's NAME, OTHER (cached) and DB_PASS (fresh).
    static func seededBackends() throws -> (BaoServer, RedisServer) {
        let bao = try BaoServer()
        let redis: RedisServer
        do {
            redis = try RedisServer()
        } catch {
            bao.remove()
            throw error
        }
        do {
            try bao.cli(["kv", "put", "secret/dynaconf/production", "NAME=v-name", "OTHER=v-other", "DB_PASS=v-fresh"])
            try redis.hset("DYNACONF_PRODUCTION", [("NAME", "r-name"), ("OTHER", "r-other"), ("DB_PASS", "r-fresh")])
        } catch {
            bao.remove()
            redis.remove()
            throw error
        }
        return (bao, redis)
    }

    @Test("Vault and Redis frozen, the worker SIGKILLed: cached keys and listings still served, fresh keys EIO within timeout")
    func crashDuringOutage() throws {
        let (bao, redis) = try Self.seededBackends()
        defer {
            bao.remove()
            redis.remove()
        }
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

    @Test("[cache] persist: a restart while Vault and Redis are frozen serves cached keys from the age file (stale), fresh keys EIO; a tampered file is ignored, never served")
    func persistedCache() throws {
        let (bao, redis) = try Self.seededBackends()
        defer {
            bao.remove()
            redis.remove()
        }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let file = fixture.dir.file("state/cache.age")
        try FileManager.default.createDirectory(atPath: fixture.dir.file("state"), withIntermediateDirectories: true)
        let twoBackends = try fixture.writeTwoBackendConfig(
            bao: bao, redis: redis,
            cache: "ttl = \"10m\"\nstale_if_error = \"10m\"\npersist = \"state/cache.age\"\npersist_identity = \"identity.txt\"")
        // And a local file store: its views are not persisted (its file is always at hand).
        try fixture.writeEncrypted("local.toml.age", "[production]\nLOCAL = \"l-local-value\"\n")
        let config = try fixture.dir.write(
            "persist.toml",
            try String(contentsOfFile: twoBackends, encoding: .utf8)
                + "\n[stores.local]\ntype = \"file\"\nfiles = [\"local.toml.age\"]\nidentity = \"identity.txt\"\n")
        let first = try fixture.mount(config: config)
        #expect(try first.readText("local/production/LOCAL") == "l-local-value")
        #expect(try first.readText("vault/production/NAME") == "v-name")
        #expect(try first.readText("redis/production/NAME") == "r-name")
        #expect(Set(try first.list("vault")).contains("production"))
        try waitUntil("the persisted cache holds both views", seconds: 20) {
            first.log.split(separator: "\n").contains { $0.contains("persisted cache written") && $0.contains("views=2 ") }
        }
        var info = stat()
        #expect(stat(file, &info) == 0 && info.st_mode & 0o777 == 0o600, "mode 0600")
        let sealed = try #require(FileManager.default.contents(atPath: file))
        #expect(AgeFile.looksLikeAge(Array(sealed)))
        for value in ["v-name", "r-name", "v-other", "r-other"] {
            #expect(!String(decoding: sealed, as: UTF8.self).contains(value), "the file is encrypted")
        }
        let opened = String(decoding: try AgeFile.decrypt(Array(sealed), identities: [.x25519(fixture.identity)]), as: UTF8.self)
        #expect(opened.contains("v-name") && opened.contains("r-name"), "the networked stores' views are in it")
        #expect(!opened.contains("l-local-value"), "a file store's view is not written")
        first.stop()
        fixture.mounted = nil

        // Both backends frozen, a new mount (a restart or a reboot): the views come from the file, stale-only.
        bao.pause()
        defer { bao.resume() }
        redis.pause()
        defer { redis.resume() }
        let second = try MountedSecretsFS(
            binary: fixture.binary, config: config, mountpoint: fixture.mountpoint, logPath: fixture.dir.file("second.log"))
        fixture.mounted = second
        for (path, value) in [("vault/production/OTHER", "v-other"), ("redis/production/OTHER", "r-other"),
                              ("vault/production/NAME", "v-name"), ("redis/production/NAME", "r-name")] {
            #expect(try second.readText(path, timeout: 10) == value, "\(path) from the persisted cache, backends frozen")
        }
        #expect(second.log.contains("took the persisted cache's views"))
        #expect(second.log.contains("serving cached values for up to stale_if_error"), "served as stale, and said so")
        for path in ["vault/production/DB_PASS", "redis/production/DB_PASS"] {
            #expect(throws: FSError.self, "\(path): a fresh key is never served from the persisted cache") {
                _ = try second.readText(path, timeout: 10)
            }
        }
        second.stop()
        fixture.mounted = nil

        // One byte changed in the middle of the file: it does not open, nothing of it is served.
        var bytes = Array(try #require(FileManager.default.contents(atPath: file)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let third = try MountedSecretsFS(
            binary: fixture.binary, config: config, mountpoint: fixture.mountpoint, logPath: fixture.dir.file("third.log"))
        fixture.mounted = third
        do {
            _ = try third.readText("redis/production/NAME", timeout: 10)
            Issue.record("a value from a tampered persisted cache was served")
        } catch let error as FSError {
            #expect(error.code == EIO || error.code == ENOENT, "\(error)")
        }
        #expect(third.log.contains("the persisted cache does not open"))
        for log in [first.log, second.log, third.log] {
            #expect(!log.contains("v-name") && !log.contains("r-other"))
        }
    }
}
