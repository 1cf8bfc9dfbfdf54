import Foundation
import Locking
import Testing
import TestSupport

@Suite("mounted Vault store", .serialized)
struct VaultMountTests {
    func config(_ fixture: Fixture, server: BaoServer, ttl: String = "5m", fresh: [String] = [], extra: String = "")
        throws -> String
    {
        let token = try fixture.dir.write("vault-token", "root\n")
        let freshList = fresh.map { "\"\($0)\"" }.joined(separator: ", ")
        return try fixture.dir.write(
            "vault.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "\(ttl)"
            [stores.vault]
            type = "vault"
            address = "\(server.address)"
            token_file = "\(token)"
            fresh = [\(freshList)]
            timeout = "2s"
            \(extra)
            """)
    }

    @Test("cat /secrets/vault/production/PASSWORD: Dynaconf's write, layering; a fresh key changed with bao kv put shows on the next open")
    func freshAndLayout() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        #expect(try server.http("POST", "/v1/secret/data/dynaconf/production", body: #"{"data": {"PASSWORD": 123456, "DB_HOST": "db1"}}"#).status == 200)
        try server.cli(["kv", "put", "secret/dynaconf/default", "NAME=default-name", "PASSWORD=default-pw"])
        try server.cli(["kv", "put", "secret/dynaconf/global", "REGION=eu"])
        let fs = try fixture.mount(config: try config(fixture, server: server, fresh: ["DB_*"]))
        #expect(try fs.list("vault") == ["default", "global", "production"])
        #expect(try fs.list("vault/production") == ["DB_HOST", "NAME", "PASSWORD", "REGION"])
        #expect(try fs.readText("vault/production/PASSWORD") == "123456")
        #expect(try fs.readText("vault/production/NAME") == "default-name")
        #expect(try fs.readText("vault/production/REGION") == "eu")
        #expect(try fs.readText("vault/production/DB_HOST") == "db1")
        try server.cli(["kv", "patch", "secret/dynaconf/production", "DB_HOST=db2"])
        #expect(try fs.readText("vault/production/DB_HOST") == "db2")
        #expect(!fs.log.contains("root"), "the token must not be logged")
    }

    @Test("hostile key names from bao kv put (/, empty, ..) are left out with a warning; ls of the env works")
    func hostileNames() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let body = #"{"data": {"a/b": "slash-value", "": "empty-value", "..": "dots-value", "PORT": 5432}}"#
        #expect(try server.http("POST", "/v1/secret/data/dynaconf/production", body: body).status == 200)
        let fs = try fixture.mount(config: try config(fixture, server: server))
        #expect(try fs.list("vault/production") == ["PORT"])
        #expect(try fs.readText("vault/production/PORT") == "5432")
        #expect(fs.log.contains("left out names that cannot be files or folders"))
        for value in ["slash-value", "empty-value", "dots-value"] { #expect(!fs.log.contains(value)) }
    }

    @Test("watch = 1s: a cached key follows bao kv put within two intervals, long before ttl; a deleted env's keys go")
    func watchMetadata() throws {
        let server = try BaoServer(audit: true)
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=watched-1"])
        try server.cli(["kv", "put", "secret/dynaconf/staging", "TOKEN=staging-1"])
        let fs = try fixture.mount(config: try config(fixture, server: server, ttl: "5m", extra: "watch = \"1s\""))
        #expect(try fs.readText("vault/production/PASSWORD") == "watched-1")
        #expect(try fs.readText("vault/staging/TOKEN") == "staging-1")
        // One poll has recorded the versions (seen by the server's audit device).
        let metadata = { server.requests(path: "secret/metadata/dynaconf/production", operation: "read") }
        try waitUntil("the first metadata poll", seconds: 10) { metadata() > 0 }
        // While nothing changes: about one metadata GET per env per interval, never one per read (the window is
        // wide: a loaded machine may delay polls, never multiply them).
        let before = metadata()
        for _ in 0..<20 { _ = try fs.readText("vault/production/PASSWORD") }
        usleep(3_000_000)
        let polls = metadata() - before
        #expect((1...6).contains(polls), "\(polls) metadata reads of one env in 3 s at watch = 1s")
        try server.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=watched-2"])
        let written = Date()
        #expect(try fs.readText("vault/production/PASSWORD", until: "watched-2", within: 10) == "watched-2")
        let delay = Date().timeIntervalSince(written)
        #expect(delay < 8, "seen after \(delay) s, long before the 5 min ttl")
        try server.cli(["kv", "metadata", "delete", "secret/dynaconf/staging"])
        var gone = false
        for _ in 0..<40 where !gone {
            gone = (try? fs.readText("vault/staging/TOKEN")) == nil
            if !gone { usleep(100_000) }
        }
        #expect(gone, "a deleted env's keys stay readable")
    }

    @Test("16 readers of a fresh Vault key: fewer GETs than reads, none older than its open; fresh_max_age bounds GETs")
    func sharedFreshFetches() throws {
        let server = try BaoServer(audit: true)
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "COUNTER=0"])
        for maxAge in ["0", "100ms"] {
            let fs = try fixture.mount(config: try config(fixture, server: server, fresh: ["COUNTER"], extra: "fresh_max_age = \"\(maxAge)\""))
            let path = fs.path("vault/production/COUNTER")
            #expect(try fs.readText("vault/production/COUNTER") == "0")
            let before = server.requests(path: "secret/data/dynaconf/production", operation: "read")
            let stop = Locked(false)
            let reads = Locked(0)
            let group = DispatchGroup()
            for _ in 0..<16 {
                group.enter()
                Thread {
                    while !stop.withLock({ $0 }) {
                        if (try? String(contentsOfFile: path, encoding: .utf8)) != nil { reads.withLock { $0 += 1 } }
                    }
                    group.leave()
                }.start()
            }
            usleep(2_000_000)
            stop.withLock { $0 = true }
            #expect(group.wait(timeout: .now() + 30) == .success)
            let gets = server.requests(path: "secret/data/dynaconf/production", operation: "read") - before
            let total = reads.withLock { $0 }
            if maxAge == "0" {
                #expect(gets < total, "\(gets) GETs for \(total) reads")
            } else {
                #expect(gets <= 2 * 12, "\(gets) GETs in 2 s at fresh_max_age 100ms (\(total) reads)")
            }
            fs.stop()
        }
    }

    @Test("a cached key shows a change after ttl")
    func cachedAfterTTL() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=v1"])
        let fs = try fixture.mount(config: try config(fixture, server: server, ttl: "1s"))
        #expect(try fs.readText("vault/production/PASSWORD") == "v1")
        try server.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=v2"])
        #expect(try fs.readText("vault/production/PASSWORD") == "v1")
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try fs.readText("vault/production/PASSWORD") == "v2")
    }

    @Test("server hung (SIGSTOP) or stopped: a fresh key answers EIO, after the timeout at most, never hangs")
    func serverHungOrDown() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "DB_HOST=db1"])
        let fs = try fixture.mount(config: try config(fixture, server: server, fresh: ["DB_*"]))
        #expect(try fs.readText("vault/production/DB_HOST") == "db1")

        server.pause()
        defer { server.resume() }
        var started = Date()
        #expect(throws: FSError(code: EIO)) { try fs.read("vault/production/DB_HOST", timeout: 15) }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 1.5 && waited < 8, "waited \(waited) s")
        server.resume()
        #expect(try fs.readText("vault/production/DB_HOST") == "db1")

        server.stop()
        started = Date()
        #expect(throws: FSError(code: EIO)) { try fs.read("vault/production/DB_HOST", timeout: 15) }
        #expect(Date().timeIntervalSince(started) < 8)
    }

    @Test("a scope layers Vault paths of one store: service, then project, then the store's own path")
    func scopes() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/services/billing/production", "PASSWORD=service-pw"])
        try server.cli(["kv", "put", "secret/projects/shop/production", "PASSWORD=project-pw", "SHOP_URL=https://shop"])
        try server.cli(["kv", "put", "secret/projects/shop/default", "TIMEOUT=30"])
        try server.cli(["kv", "put", "secret/dynaconf/production", "PASSWORD=platform-pw", "SHOP_URL=x", "REGION=eu"])
        let scope = """
            [scopes.billing]
            chain = [{ store = "vault", path = "services/billing" }, { store = "vault", path = "projects/shop" }, "vault"]
            fresh = ["PASSWORD"]
            """
        let fs = try fixture.mount(config: try config(fixture, server: server, extra: scope))
        #expect(try fs.list("") == ["billing", "vault"])
        #expect(try fs.list("billing") == ["default", "global", "production"])
        #expect(try fs.list("billing/production") == ["PASSWORD", "REGION", "SHOP_URL", "TIMEOUT"])
        #expect(try fs.readText("billing/production/PASSWORD") == "service-pw")
        #expect(try fs.readText("billing/production/SHOP_URL") == "https://shop")
        #expect(try fs.readText("billing/production/TIMEOUT") == "30")
        #expect(try fs.readText("billing/production/REGION") == "eu")
        #expect(try fs.readText("vault/production/PASSWORD") == "platform-pw")
        try server.cli(["kv", "put", "secret/services/billing/production", "PASSWORD=service-pw-2"])
        #expect(try fs.readText("billing/production/PASSWORD") == "service-pw-2")
    }

    @Test("write merges into the env secret; --json keeps types; get reads vault paths")
    func writeAndGet() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "KEEP=kept"])
        let config = try config(fixture, server: server)
        #expect(try fixture.cli(["write", "--config", config, "vault", "-e", "production", "PASSWORD=0x1F"]).status == 0)
        #expect(try fixture.cli(["write", "--config", config, "vault", "-e", "production", "PORT=5432", "--json"]).status == 0)
        #expect(try fixture.cli(["get", "--config", config, "vault/production/PASSWORD"]).stdoutText == "0x1F")
        #expect(try fixture.cli(["get", "--config", config, "vault/production/KEEP"]).stdoutText == "kept")
        let raw = try server.http("GET", "/v1/secret/data/dynaconf/production").body
        #expect(raw.contains("\"PORT\":5432"))
        let bad = try fixture.cli(["write", "--config", config, "vault", "-e", "production", "X=not json", "--json"])
        #expect(bad.status != 0)
    }
}
