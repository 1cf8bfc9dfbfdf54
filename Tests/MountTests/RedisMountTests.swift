import Foundation
import RedisClient
import Locking
import Testing
import TestSupport

@Suite("mounted Redis store", .serialized)
struct RedisMountTests {
    func config(_ fixture: Fixture, server: RedisServer, ttl: String = "5m", fresh: [String] = [], extra: String = "")
        throws -> String
    {
        let freshList = fresh.map { "\"\($0)\"" }.joined(separator: ", ")
        return try fixture.dir.write(
            "redis.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "\(ttl)"
            [stores.redis]
            type = "redis"
            url = "\(server.url)"
            fresh = [\(freshList)]
            timeout = "1s"
            \(extra)
            """)
    }

    @Test("Dynaconf hashes as files: tokens, layering, env listing; a fresh key changed with HSET shows on the next open")
    func freshAndLayout() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("PORT", "@int 1234"), ("PASSWORD", "0x1F"), ("DB_HOST", "db1")])
        try server.hset("DYNACONF_DEFAULT", [("NAME", "@str 007")])
        try server.hset("DYNACONF_GLOBAL", [("PORT", "@int 99")])
        let fs = try fixture.mount(config: try config(fixture, server: server, fresh: ["DB_*"]))
        #expect(try fs.list("redis") == ["default", "global", "production"])
        #expect(try fs.list("redis/production") == ["DB_HOST", "NAME", "PASSWORD", "PORT"])
        #expect(try fs.readText("redis/production/PORT") == "99")
        #expect(try fs.readText("redis/production/NAME") == "007")
        #expect(try fs.readText("redis/production/PASSWORD") == "0x1F")
        #expect(try fs.readText("redis/production/DB_HOST") == "db1")
        try server.hset("DYNACONF_PRODUCTION", [("DB_HOST", "db2")])
        #expect(try fs.readText("redis/production/DB_HOST") == "db2")
    }

    @Test("hostile key names (/, empty, . and .., 300 bytes) are left out with one warning; ls never fails")
    func hostileNames() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let long = String(repeating: "K", count: 300)
        try server.hset("DYNACONF_DEFAULT", [("a/b", "slash-value"), ("", "empty-value"), ("OK_DEFAULT", "d")])
        try server.hset("DYNACONF_PRODUCTION", [(".", "dot-value"), ("..", "dotdot-value"), (long, "long-value"), ("PORT", "@int 1")])
        try server.hset("DYNACONF_BAD/ENV", [("X", "x")])
        let fs = try fixture.mount(config: try config(fixture, server: server))
        #expect(try fs.list("redis") == ["default", "global", "production"])
        #expect(try fs.list("redis/production") == ["OK_DEFAULT", "PORT"])
        #expect(try fs.list("redis/default") == ["OK_DEFAULT"])
        #expect(try fs.readText("redis/production/PORT") == "1")
        #expect(throws: FSError(code: ENOENT)) { try fs.read("redis/production/a") }
        _ = try fs.list("redis/production")
        let warnings = fs.log.components(separatedBy: "left out names that cannot be files or folders").count - 1
        #expect(warnings == 3, "one warning per store and env listed: env names, production, default")
        #expect(fs.log.contains("with '/' at byte 2") && fs.log.contains("an empty name"))
        #expect(fs.log.contains("a name of 300 bytes"))
        for value in ["slash-value", "empty-value", "dot-value", "long-value"] { #expect(!fs.log.contains(value)) }
    }

    @Test("16 readers of a fresh key: strict sharing never returns a value older than the open; fresh_max_age bounds HGETs")
    func sharedFreshFetches() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let settings = RedisSettings(endpoint: try RedisEndpoint(url: server.url), timeout: 5)
        let writer = try RedisConnection(settings)
        defer { writer.close() }
        _ = try writer.command("HSET", "DYNACONF_PRODUCTION", "COUNTER", "0")
        func hgets() throws -> Int {
            guard case .bulk(let raw?) = try writer.command("INFO", "commandstats") else { return -1 }
            let line = String(decoding: raw, as: UTF8.self).split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("cmdstat_hget:") } ?? ""
            return Int(line.split(separator: ",").first?.split(separator: "=").last ?? "") ?? 0
        }
        for maxAge in ["0", "100ms"] {
            let fs = try fixture.mount(config: try config(fixture, server: server, fresh: ["COUNTER"], extra: "fresh_max_age = \"\(maxAge)\""))
            let written = Locked(0)
            let stop = Locked(false)
            let stale = Locked(0)
            let reads = Locked(0)
            let path = fs.path("redis/production/COUNTER")
            let before = try hgets()
            let group = DispatchGroup()
            for _ in 0..<16 {
                group.enter()
                Thread {
                    while !stop.withLock({ $0 }) {
                        let floor = written.withLock { $0 }
                        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let value = Int(text) else { continue }
                        reads.withLock { $0 += 1 }
                        if maxAge == "0" && value < floor { stale.withLock { $0 += 1 } }
                    }
                    group.leave()
                }.start()
            }
            let started = Date()
            var version = 0
            while Date().timeIntervalSince(started) < 2 {
                version += 1
                _ = try writer.command("HSET", "DYNACONF_PRODUCTION", "COUNTER", "\(version)")
                written.withLock { $0 = version }
                usleep(5000)
            }
            stop.withLock { $0 = true }
            #expect(group.wait(timeout: .now() + 30) == .success)
            // One fetch is one pipelined round of HGETs, one per layer (global, production, dynaconf, default).
            let fetches = (try hgets() - before) / 4
            let total = reads.withLock { $0 }
            if maxAge == "0" {
                #expect(stale.withLock { $0 } == 0, "a read older than its open")
                // Sharing needs overlapping opens; a sanitizer build runs each read many times slower (and the
                // daemon too), so they rarely overlap there: the count says nothing about sharing in that build.
                #expect(Sanitizers.runtimeLinked || fetches < total, "\(fetches) fetches for \(total) reads")
            } else {
                #expect(fetches <= 2 * 12, "\(fetches) fetches in 2 s at fresh_max_age 100ms")
            }
            fs.stop()
        }
    }

    @Test("a read in flight when its worker is SIGKILLed completes in the reader (the request is resent to the next)")
    func inFlightAcrossWorkerKill() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("DB_HOST", "in-flight-1")])
        let config = try config(fixture, server: server, fresh: ["DB_*"])
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(of: "timeout = \"1s\"", with: "timeout = \"10s\"")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/DB_HOST") == "in-flight-1")
        // The backend hangs: the worker takes the LOOKUP and waits on Redis with the request unanswered.
        server.pause()
        let result = Locked<Result<String, FSError>?>(nil)
        let reader = Thread {
            do {
                result.withLock { $0 = .success((try? fs.readText("redis/production/DB_HOST", timeout: 30)) ?? "") }
            }
        }
        reader.start()
        try fs.waitForWaitingRequests()  // the read is in the worker, which waits on Redis
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        server.resume()
        for _ in 0..<400 where result.withLock({ $0 }) == nil { usleep(50_000) }
        #expect(result.withLock { $0 } == .success("in-flight-1"), "the reader's request was lost with its worker")
    }

    @Test("a cached key shows an HSET within 100 ms through keyspace notifications")
    func pushed() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v1")])
        let fs = try fixture.mount(config: try config(fixture, server: server))
        #expect(try fs.readText("redis/production/PASSWORD") == "v1")
        try server.waitForPatternSubscriptions()  // the worker's watcher listens
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v2")])
        let written = Date()
        var seen = ""
        while Date().timeIntervalSince(written) < 2 {
            seen = try fs.readText("redis/production/PASSWORD")
            if seen == "v2" { break }
            usleep(2000)
        }
        let delay = Date().timeIntervalSince(written)
        #expect(seen == "v2")
        #expect(delay < 0.1, "the new value showed after \(delay)s")
    }

    @Test("with notifications off: the daemon says how to enable them, and cached keys refresh after ttl")
    func ttlFallback() throws {
        let server = try RedisServer(notifications: "")
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v1")])
        let fs = try fixture.mount(config: try config(fixture, server: server, ttl: "1s"))
        #expect(try fs.readText("redis/production/PASSWORD") == "v1")
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "v2")])
        #expect(try fs.readText("redis/production/PASSWORD") == "v1")  // still cached
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try fs.readText("redis/production/PASSWORD") == "v2")
        #expect(fs.log.contains("notify-keyspace-events Kh"))
    }

    @Test("server hung (SIGSTOP) or stopped: fresh keys EIO after the timeout at most, cached keys stay; back: values")
    func serverHungOrDown() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "cached"), ("DB_HOST", "fresh")])
        let fs = try fixture.mount(config: try config(fixture, server: server, ttl: "0", fresh: ["DB_*"]))
        #expect(try fs.readText("redis/production/DB_HOST") == "fresh")
        #expect(try fs.readText("redis/production/PASSWORD") == "cached")

        server.pause()
        defer { server.resume() }
        var started = Date()
        #expect(throws: FSError(code: EIO)) { try fs.read("redis/production/DB_HOST", timeout: 10) }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.9 && waited < 5, "waited \(waited) s")
        #expect(try fs.readText("redis/production/PASSWORD", timeout: 10) == "cached")
        server.resume()
        #expect(try fs.readText("redis/production/DB_HOST") == "fresh")

        server.stop()
        started = Date()
        #expect(throws: FSError(code: EIO)) { try fs.read("redis/production/DB_HOST", timeout: 10) }
        #expect(Date().timeIntervalSince(started) < 5)
        try server.start()
        try server.hset("DYNACONF_PRODUCTION", [("DB_HOST", "back")])
        #expect(try fs.readText("redis/production/DB_HOST") == "back")
    }

    @Test("a scope layers key prefixes of one store: BILLING_<ENV> hashes first, then DYNACONF_<ENV>")
    func scopes() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("BILLING_PRODUCTION", [("PASSWORD", "service-pw"), ("API_KEY", "k1")])
        try server.hset("BILLING_DEFAULT", [("TIMEOUT", "@int 30")])
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "platform-pw"), ("TIMEOUT", "@int 5"), ("REGION", "eu")])
        let scope = """
            [scopes.billing]
            chain = [{ store = "redis", path = "BILLING" }, "redis"]
            fresh = ["PASSWORD"]
            """
        let fs = try fixture.mount(config: try config(fixture, server: server, extra: scope))
        #expect(try fs.list("billing") == ["default", "global", "production"])
        #expect(try fs.list("billing/production") == ["API_KEY", "PASSWORD", "REGION", "TIMEOUT"])
        #expect(try fs.readText("billing/production/PASSWORD") == "service-pw")
        #expect(try fs.readText("billing/production/TIMEOUT") == "30")
        #expect(try fs.readText("billing/production/REGION") == "eu")
        #expect(try fs.readText("redis/production/PASSWORD") == "platform-pw")
        try server.hset("BILLING_PRODUCTION", [("PASSWORD", "service-pw-2")])
        #expect(try fs.readText("billing/production/PASSWORD") == "service-pw-2")
        // A cached key (ttl 5m) under the scope's own prefix: the keyspace push reaches it too.
        #expect(try fs.readText("billing/production/API_KEY") == "k1")
        try server.hset("BILLING_PRODUCTION", [("API_KEY", "k2")])
        #expect(try fs.readText("billing/production/API_KEY", until: "k2", within: 2) == "k2",
                "the scope's hash was not watched")
    }

    @Test("write --typed stores Dynaconf tokens; get reads Redis paths")
    func writeAndGet() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try config(fixture, server: server)
        let typed = try fixture.cli(["write", "--config", config, "redis", "-e", "production", "PORT=1234", "RATIO=1.5",
                                     "ON=true", "CONF={\"a\":1}", "CODE=007", "NAME=Bruno", "--typed"])
        #expect(typed.status == 0, "\(typed.stderr)")
        let raw = try server.cli(["HGETALL", "DYNACONF_PRODUCTION"]).stdoutText
        for token in ["@int 1234", "@float 1.5", "@bool True", "@json {\"a\":1}"] {
            #expect(raw.contains(token), "missing \(token) in \(raw)")
        }
        #expect(!raw.contains("@int 7"))
        #expect(try fixture.cli(["get", "--config", config, "redis/production/PORT"]).stdoutText == "1234")
        #expect(try fixture.cli(["get", "--config", config, "redis/production/CODE"]).stdoutText == "007")
        let at = try fixture.cli(["write", "--config", config, "redis", "-e", "production", "AT=@format x", "--typed"])
        #expect(at.status == 0)
        #expect(try fixture.cli(["get", "--config", config, "redis/production/AT"]).stdoutText == "@format x")
        let plain = try fixture.cli(["write", "--config", config, "redis", "-e", "production", "CODE=007"])
        #expect(plain.status == 0)
        #expect(try fixture.cli(["get", "--config", config, "redis/production/CODE"]).stdoutText == "007")
        #expect(try fixture.cli(["get", "--config", config, "redis/production/NAME"]).stdoutText == "Bruno")
    }
}
