import Foundation
import Logging
import RedisClient
import RedisStore
import SecretsCore
import StoreConformance
import Locking
import Testing
import TestSupport

@Suite("RESP and Redis URLs")
struct RESPTests {
    let parser = RESPParser()

    @Test("settings: url from REDIS_URL, else redis://127.0.0.1:6379/0; the config wins; prefix and timeout defaults")
    func environmentDefaults() throws {
        let bare = try #require(try Config.parse(text: "[stores.r]\ntype = \"redis\"\n", file: "c.toml").stores.first)
        let fromEnvironment = try RedisStoreSettings(config: bare, environment: ["REDIS_URL": "redis://cache:6380/3"])
        #expect(fromEnvironment.settings.endpoint.description == "redis://cache:6380/3")
        let fallback = try RedisStoreSettings(config: bare, environment: [:])
        #expect(fallback.settings.endpoint.description == "redis://127.0.0.1:6379/0")
        #expect(fallback.prefix == "DYNACONF" && fallback.settings.timeout == 2)
        let configured = try #require(try Config.parse(
            text: "[stores.r]\ntype = \"redis\"\nurl = \"redis://mine:1/1\"\n", file: "c.toml").stores.first)
        let mine = try RedisStoreSettings(config: configured, environment: ["REDIS_URL": "redis://cache:6380/3"])
        #expect(mine.settings.endpoint.description == "redis://mine:1/1")
    }

    func parse(_ text: String) throws -> RESPValue? {
        try parser.parse(Array(text.utf8), from: 0)?.0
    }

    @Test("valid replies, and incomplete ones wait for more bytes")
    func replies() throws {
        #expect(try parse("+OK\r\n") == .simple("OK"))
        #expect(try parse("-ERR bad\r\n") == .error("ERR bad"))
        #expect(try parse(":42\r\n") == .integer(42))
        #expect(try parse("$3\r\nabc\r\n") == .bulk(Array("abc".utf8)))
        #expect(try parse("$-1\r\n") == .bulk(nil))
        #expect(try parse("*2\r\n$1\r\na\r\n:1\r\n") == .array([.bulk([97]), .integer(1)]))
        #expect(try parse("$3\r\nab") == nil)
        #expect(try parse("*2\r\n$1\r\na\r\n") == nil)
        #expect(RESPParser.encode([Array("GET".utf8), Array("k".utf8)]) == Array("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".utf8))
    }

    @Test("malformed and oversized replies are errors", arguments: [
        "!what\r\n", "$abc\r\n", "$5\r\nabc\r\nxx", "$99999999999\r\n", "*99999999999\r\n", ":12\rx\n",
        String(repeating: "*1\r\n", count: 20) + ":1\r\n", "+" + String(repeating: "x", count: 70_000),
    ])
    func malformed(text: String) {
        #expect(throws: RedisError.self) { try parser.parse(Array(text.utf8), from: 0) }
    }

    @Test("URLs: schemes, credentials, database, unix sockets; descriptions never show the password")
    func urls() throws {
        let plain = try RedisEndpoint(url: "redis://127.0.0.1:7000/3")
        #expect(plain.address == .tcp(host: "127.0.0.1", port: 7000) && plain.database == 3 && !plain.tls)
        let acl = try RedisEndpoint(url: "rediss://app:s3cr%40t@cache.internal:6380/0")
        #expect(acl.tls && acl.username == "app" && acl.password == "s3cr@t")
        #expect(!acl.description.contains("s3cr"))
        let unix = try RedisEndpoint(url: "unix:///run/redis.sock?db=2")
        #expect(unix.address == .unix(path: "/run/redis.sock") && unix.database == 2)
        #expect(throws: RedisError.self) { try RedisEndpoint(url: "http://x") }
        #expect(throws: RedisError.self) { try RedisEndpoint(url: "redis://h:99999/0") }
    }

    @Test("Dynaconf tokens", arguments: [
        ("@int 1234", SecretValue.int(1234)), ("@float 1.5", .float(1.5)), ("@bool True", .bool(true)),
        ("@bool False", .bool(false)), ("@json {\"a\": 1, \"b\": [true, null]}", .table(["a": .int(1), "b": .array([.bool(true), .null])])),
        ("@none ", .null), ("@str 007", .string("007")), ("0x1F", .string("0x1F")), ("@format {this.X}", .string("@format {this.X}")),
        ("@int abc", .string("@int abc")), ("", .string("")), ("@str @format x", .string("@format x")),
    ])
    func tokens(raw: String, expected: SecretValue) {
        #expect(DynaconfTokens.decode(Array(raw.utf8)) == expected)
    }

    @Test("Sentinel URLs: several sentinels, default port, IPv6, credentials for the data nodes, TLS, database")
    func sentinelURLs() throws {
        let parsed = try SentinelEndpoint(url: "rediss+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/mymaster/3")
        #expect(parsed.sentinels == [.tcp(host: "s1", port: 26380), .tcp(host: "s2", port: 26379), .tcp(host: "::1", port: 26381)])
        #expect(parsed.masterName == "mymaster" && parsed.database == 3 && parsed.tls)
        #expect(parsed.username == "app" && parsed.password == "p@ss")
        #expect(!parsed.description.contains("p@ss") && parsed.description.contains("s1:26380"))
        #expect(try SentinelEndpoint(url: "redis+sentinel://h/m").database == 0)
        #expect(throws: RedisError.self) { try SentinelEndpoint(url: "redis+sentinel://h:1") }
        #expect(throws: RedisError.self) { try SentinelEndpoint(url: "redis+sentinel://h:1/m/0/extra") }
        #expect(throws: RedisError.self) { try SentinelEndpoint(url: "redis://h:1/m/0") }
    }

    @Test("Sentinel state: a dead sentinel and one naming a replica are passed over; the master ROLE confirms is used")
    func sentinelRefresh() throws {
        let master = try RedisServer()
        defer { master.remove() }
        let replica = try RedisServer(extra: ["--replicaof", "127.0.0.1", String(master.port)])
        defer { replica.remove() }
        func naming(_ port: Int) -> [UInt8] {
            let portText = String(port)
            return Array("*2\r\n$9\r\n127.0.0.1\r\n$\(portText.utf8.count)\r\n\(portText)\r\n".utf8)
        }
        let wrong = try FakeRedisServer(reply: naming(replica.port))
        defer { wrong.stop() }
        let right = try FakeRedisServer(reply: naming(master.port))
        defer { right.stop() }
        let dead = try freePort()
        let endpoint = try SentinelEndpoint(url: "redis+sentinel://127.0.0.1:\(dead),127.0.0.1:\(wrong.port),127.0.0.1:\(right.port)/m/0")
        let target = RedisTarget(sentinel: endpoint, timeout: 1, caFile: nil)
        #expect(target.generation == -1, "no master known before asking")
        let pool = RedisPool(target: target)
        defer { pool.close() }
        let reply = try pool.withConnection { connection throws(RedisError) in try connection.command("ROLE") }
        guard case .array(let role?) = reply else { Issue.record("no ROLE reply"); return }
        #expect(role.first?.text == "master")
        #expect(target.settings.endpoint.address == .tcp(host: "127.0.0.1", port: master.port))
        #expect(target.generation == 1)
        #expect(try target.refresh() == false, "asking again without a move changes nothing")
        let none = RedisTarget(
            sentinel: try SentinelEndpoint(url: "redis+sentinel://127.0.0.1:\(dead),127.0.0.1:\(wrong.port)/m/0"), timeout: 1, caFile: nil)
        #expect(throws: RedisError.self) { try none.refresh() }
    }

    @Test("a field that is not UTF-8 is served byte for byte, not as replacement characters")
    func binaryField() {
        let raw: [UInt8] = [0xFF, 0xFE, 0x00, 0x41]
        let value = DynaconfTokens.decode(raw)
        #expect(value == .bytes(raw))
        #expect(value.fileBytes().withUnsafeBytes { Array($0) } == raw)
        #expect(value.description == "<redacted bytes>")
    }
}

/// A TCP server on a free port that answers every connection with `reply` (or nothing), for malformed-server tests.
final class FakeRedisServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32

    init(reply: [UInt8]?) throws {
        port = try freePort()
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else { throw TestFailure.message("fake server cannot listen") }
        let listener = fd
        Thread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { return }
                if let reply {
                    var request = [UInt8](repeating: 0, count: 4096)
                    _ = recv(client, &request, request.count, 0)
                    _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    close(client)
                } else {
                    Thread.sleep(forTimeInterval: 5)
                    close(client)
                }
            }
        }.start()
    }

    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}

@Suite("Redis client against misbehaving servers")
struct MisbehavingServerTests {
    @Test("garbage is an error, not a crash", arguments: ["!garbage\r\n", "$999999999999\r\n", "*1\r\n$3\r\nab\r\nzz\r\n"])
    func garbage(reply: String) throws {
        let server = try FakeRedisServer(reply: Array(reply.utf8))
        defer { server.stop() }
        let endpoint = try RedisEndpoint(url: "redis://127.0.0.1:\(server.port)/0")
        let connection = try RedisConnection(RedisSettings(endpoint: endpoint, timeout: 2))
        #expect(throws: RedisError.self) { try connection.command("PING") }
    }

    @Test("a server that never answers gives a bounded timeout")
    func silent() throws {
        let server = try FakeRedisServer(reply: nil)
        defer { server.stop() }
        let endpoint = try RedisEndpoint(url: "redis://127.0.0.1:\(server.port)/0")
        let connection = try RedisConnection(RedisSettings(endpoint: endpoint, timeout: 0.3))
        let started = Date()
        #expect(throws: RedisError(.timeout, "read to redis://127.0.0.1:\(server.port)/0 timed out after 0.3s")) {
            try connection.command("PING")
        }
        #expect(Date().timeIntervalSince(started) < 3)
    }

    @Test("nothing listening: a clear connection error")
    func refused() throws {
        let endpoint = try RedisEndpoint(url: "redis://127.0.0.1:\(try freePort())/0")
        #expect(throws: RedisError.self) { try RedisConnection(RedisSettings(endpoint: endpoint, timeout: 1)) }
    }
}

func redisStore(_ url: String, extra: String = "") throws -> RedisStore {
    let config = try Config.parse(text: "[stores.r]\ntype = \"redis\"\nurl = \"\(url)\"\n\(extra)\n", file: "c.toml")
    return try RedisStore(config: try #require(config.stores.first), logger: Logger(label: "test"))
}

@Suite("Redis store against a real redis-server", .serialized)
struct RedisStoreTests {
    @Test("passes the store conformance suite")
    func conformance() throws {
        let server = try RedisServer()
        defer { server.remove() }
        for (env, fields) in StoreConformance.seed {
            try server.hset("DYNACONF_\(env.uppercased())", fields.map { ($0.key, DynaconfTokens.encode($0.value)) })
        }
        let store = try redisStore(server.url)
        defer { store.close() }
        try StoreConformance(store: store, witness: { try redisStore(server.url) }) { env, key, value in
            try server.hset("DYNACONF_\(env.uppercased())", [(key, DynaconfTokens.encode(value))])
        }.checkConformance()
    }

    @Test("data written exactly as Dynaconf writes it reads back as the plain value")
    func dynaconfLayout() throws {
        let server = try RedisServer()
        defer { server.remove() }
        try server.hset("DYNACONF_PRODUCTION", [
            ("NAME", "Bruno"), ("PORT", "@int 1234"), ("RATIO", "@float 1.5"), ("ON", "@bool True"), ("OFF", "@bool False"),
            ("CONF", "@json {\"a\": 1}"), ("NOTHING", "@none "), ("CODE", "@str 007"), ("TPL", "@format {this.NAME}"),
            ("PASSWORD", "0x1F"),
        ])
        try server.hset("DYNACONF_DEFAULT", [("NAME", "default"), ("ONLY_DEFAULT", "d")])
        try server.hset("DYNACONF_GLOBAL", [("REGION", "eu")])
        _ = try server.cli(["SET", "DYNACONF_NOT_A_HASH", "x"])
        let store = try redisStore(server.url)
        defer { store.close() }
        #expect(try store.envs(at: nil) == ["default", "global", "production"])
        let expected: [String: String] = [
            "NAME": "Bruno", "PORT": "1234", "RATIO": "1.5", "ON": "true", "OFF": "false", "CONF": #"{"a":1}"#,
            "NOTHING": "null", "CODE": "007", "TPL": "@format {this.NAME}", "PASSWORD": "0x1F",
        ]
        for (key, bytes) in expected {
            let value = try #require(try store.value(of: key, layers: ["global", "production", "default"], at: nil))
            #expect(value.fileBytes().utf8String() == bytes, "\(key)")
        }
        #expect(try store.value(of: "ONLY_DEFAULT", layers: ["global", "production", "default"], at: nil) == .string("d"))
        #expect(try store.value(of: "name", layers: ["production"], at: nil) == .string("Bruno"))
        #expect(try store.value(of: "X", layers: ["production"], at: "OTHERPREFIX") == nil)
    }

    @Test("ACL user with a password; a wrong password is a clear error that does not repeat it")
    func acl() throws {
        let server = try RedisServer()
        defer { server.remove() }
        _ = try server.cli(["ACL", "SETUSER", "reader", "on", ">reader-pass", "~DYNACONF_*", "+@read", "+@connection", "+config|get"])
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "acl-value")])
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let good = try dir.write("good.txt", "reader-pass\n")
        let store = try redisStore(server.url, extra: "username = \"reader\"\npassword_file = \"\(good)\"")
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("acl-value"))
        store.close()

        let bad = try dir.write("bad.txt", "wrong-pass-xyz\n")
        let refused = try redisStore(server.url, extra: "username = \"reader\"\npassword_file = \"\(bad)\"")
        defer { refused.close() }
        do {
            _ = try refused.value(of: "PASSWORD", layers: ["production"], at: nil)
            Issue.record("a wrong password must fail")
        } catch {
            #expect(error.description.contains("authentication") && error.description.contains("WRONGPASS"))
            #expect(!error.description.contains("wrong-pass-xyz"))
            #expect(error.errno == EACCES)
        }
    }

    @Test("an ACL user without channel permissions: watch says no and names the ACL to grant; once granted, pushes")
    func aclWithoutChannels() throws {
        let server = try RedisServer()
        defer { server.remove() }
        _ = try server.cli(["ACL", "SETUSER", "reader", "on", ">reader-pass", "~DYNACONF_*", "+@read", "+@connection",
                            "+config|get", "resetchannels"])
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let password = try dir.write("pass.txt", "reader-pass\n")
        func store(_ recorder: RecordingLogHandler.Storage) throws -> RedisStore {
            let config = try Config.parse(
                text: "[stores.r]\ntype = \"redis\"\nurl = \"\(server.url)\"\nusername = \"reader\"\npassword_file = \"\(password)\"\n",
                file: "c.toml")
            return try RedisStore(
                config: try #require(config.stores.first),
                logger: Logger(label: "test") { _ in RecordingLogHandler(storage: recorder) })
        }
        let recorder = RecordingLogHandler.Storage()
        let refused = try store(recorder)
        #expect(!refused.watch { _ in })
        refused.close()
        let logged = recorder.messages.withLock { $0.joined(separator: "\n") }
        #expect(logged.contains("NOPERM"))
        #expect(logged.contains("ACL SETUSER reader +psubscribe &__keyspace@0__:DYNACONF_*"))
        #expect(!logged.contains("reader-pass"))

        _ = try server.cli(["ACL", "SETUSER", "reader", "+psubscribe", "&__keyspace@0__:DYNACONF_*"])
        let granted = try store(RecordingLogHandler.Storage())
        defer { granted.close() }
        let changes = Locked(0)
        #expect(granted.watch { _ in changes.withLock { $0 += 1 } })
        try server.waitForPatternSubscriptions()
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "pushed")])
        var seen = false
        for _ in 0..<100 where !seen {
            seen = changes.withLock { $0 } > 0
            if !seen { usleep(10_000) }
        }
        #expect(seen, "no change pushed to a user allowed to subscribe")
    }

    @Test("unix socket and a database other than 0 (SELECT)")
    func unixSocketAndDatabase() throws {
        let socketDir = try TemporaryDirectory()
        defer { socketDir.remove() }
        let socketPath = socketDir.file("redis.sock")
        let server = try RedisServer(extra: ["--unixsocket", socketPath, "--unixsocketperm", "700"])
        defer { server.remove() }
        _ = try server.cli(["-n", "3", "HSET", "DYNACONF_PRODUCTION", "PASSWORD", "db3-value"])
        let store = try redisStore("unix://\(socketPath)?db=3")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("db3-value"))
        let tcp = try redisStore("redis://127.0.0.1:\(server.port)/3")
        defer { tcp.close() }
        #expect(try tcp.envs(at: nil) == ["production"])
        let other = try redisStore(server.url)
        defer { other.close() }
        #expect(try other.envs(at: nil) == [])
    }

    @Test("TLS with a CA made by the test; an untrusted CA is refused")
    func tls() throws {
        let server = try RedisServer(tls: true)
        defer { server.remove() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "over-tls")])
        let ca = try #require(server.tls?.ca)
        let store = try redisStore(server.url, extra: "ca_cert = \"\(ca)\"")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("over-tls"))
        let untrusted = try redisStore(server.url)
        defer { untrusted.close() }
        #expect(throws: SecretsError.self) { try untrusted.value(of: "PASSWORD", layers: ["production"], at: nil) }
    }

    @Test("a hung server (SIGSTOP) times out after `timeout`, a stopped one fails at once: both EIO; back: values")
    func serverHungOrDown() throws {
        let server = try RedisServer()
        defer { server.remove() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "before")])
        let store = try redisStore(server.url, extra: "timeout = \"1s\"")
        defer { store.close() }
        defer { server.resume() }
        try checkOutages(
            read: { try store.value(of: "PASSWORD", layers: ["production"], at: nil) }, pause: server.pause,
            resume: server.resume, stop: server.stop, restart: server.start,
            rewrite: { try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "after")]) })
    }

    @Test("one bound per operation: connect + AUTH + SELECT of a cold store, and pipelined HGETs, fail within timeout + 100 ms")
    func oneBoundPerOperation() throws {
        let server = try RedisServer()
        defer { server.remove() }
        _ = try server.cli(["ACL", "SETUSER", "reader", "on", ">reader-pass", "~DYNACONF_*", "+@all"])
        _ = try server.cli(["-n", "2", "HSET", "DYNACONF_PRODUCTION", "PASSWORD", "bounded"])
        let password = try server.dir.write("password", "reader-pass\n")
        let extra = "username = \"reader\"\npassword_file = \"\(password)\"\ntimeout = \"1s\""
        let cold = try redisStore("redis://127.0.0.1:\(server.port)/2", extra: extra)
        defer { cold.close() }
        let warm = try redisStore("redis://127.0.0.1:\(server.port)/2", extra: extra)
        defer { warm.close() }
        #expect(try warm.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("bounded"))
        server.pause()
        defer { server.resume() }
        let calls: [(String, () throws -> Void)] = [
            ("a new connection (the kernel accepts it; AUTH gets no answer)", {
                _ = try cold.value(of: "PASSWORD", layers: ["global", "production", "dynaconf", "default"], at: nil)
            }),
            ("pipelined HGETs on a pooled connection", {
                _ = try warm.value(of: "PASSWORD", layers: ["global", "production", "dynaconf", "default"], at: nil)
            }),
            ("a whole env", { _ = try warm.fields(of: "production", at: nil) }),
        ]
        for (what, call) in calls {
            let started = Date()
            #expect(throws: SecretsError.self, "\(what) on a frozen server") { try call() }
            let waited = Date().timeIntervalSince(started)
            #expect(waited >= 0.9 && waited < 1.1, "\(what): waited \(waited) s at timeout 1s")
        }
    }

    @Test("a 1 MiB value and 10,000 fields in one hash")
    func sizes() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let store = try redisStore(server.url)
        defer { store.close() }
        let big = [UInt8](repeating: UInt8(ascii: "z"), count: 1 << 20)
        try store.write(env: "production", fields: [("BIG", big)])
        var fields: [(String, [UInt8])] = []
        for index in 0..<10_000 { fields.append(("KEY_\(index)", Array("value-\(index)".utf8))) }
        try store.write(env: "many", fields: fields)
        #expect(try store.value(of: "BIG", layers: ["production"], at: nil)?.fileBytes().count == 1 << 20)
        #expect(try store.fields(of: "many", at: nil)?.count == 10_000)
        #expect(try store.value(of: "KEY_9999", layers: ["many"], at: nil) == .string("value-9999"))
    }

    @Test("a notice names what changed (env and location); a burst of 200 HSETs arrives as a few notices")
    func noticesNameTheEnv() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let store = try redisStore(server.url)
        defer { store.close() }
        let notices = Locked<[[StoreChange]]>([])
        #expect(store.watch(locations: ["SVC"]) { changes in notices.withLock { $0.append(changes) } })
        try server.waitForPatternSubscriptions()
        try server.hset("DYNACONF_STAGING", [("A", "1")])
        try server.hset("SVC_PRODUCTION", [("B", "2")])
        for _ in 0..<200 where notices.withLock({ Set($0.flatMap { $0 }).count }) < 2 { usleep(5000) }
        #expect(Set(notices.withLock { $0.flatMap { $0 } }) == [
            .at(location: nil, env: "staging"), .at(location: "SVC", env: "production"),
        ])
        notices.withLock { $0 = [] }
        // One redis-cli run of 200 HSETs (a few ms apart at most): coalesced into far fewer notices.
        var script = ""
        for index in 0..<200 { script += "HSET DYNACONF_PRODUCTION K\(index) v\(index)\n" }
        _ = try run(["redis-cli", "-p", "\(server.port)"], input: Array(script.utf8), timeout: 30)
        // Notices keep their order: once the one for a write made after the burst arrives, the burst's have.
        let marker = StoreChange.at(location: nil, env: "marker")
        try server.hset("DYNACONF_MARKER", [("M", "1")])
        try waitUntil("the notice after the burst", seconds: 10, every: 0.005) {
            notices.withLock { $0.contains { $0.contains(marker) } }
        }
        let burst = notices.withLock { $0 }.map { $0.filter { $0 != marker } }.filter { !$0.isEmpty }
        #expect(!burst.isEmpty && burst.count < 50, "\(burst.count) notices for 200 HSETs")
        #expect(Set(burst.flatMap { $0 }) == [.at(location: nil, env: "production")])
    }

    @Test("keyspace notifications report a change within 100 ms; with notifications off, watch says so")
    func notifications() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let store = try redisStore(server.url)
        defer { store.close() }
        let changes = Locked<[Date]>([])
        #expect(store.watch { _ in changes.withLock { $0.append(Date()) } })
        try server.waitForPatternSubscriptions()
        let written = Date()
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "pushed")])
        var seen: Date?
        for _ in 0..<200 where seen == nil {
            seen = changes.withLock { $0.first }
            if seen == nil { usleep(5000) }
        }
        let delay = try #require(seen).timeIntervalSince(written)
        #expect(delay < 0.1, "change reported after \(delay)s")

        // After a server restart the watcher reconnects, resubscribes, and keeps reporting.
        server.stop()
        try server.start()
        try server.waitForPatternSubscriptions()  // the watcher reconnected and subscribed again
        let before = changes.withLock { $0.count }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "after-restart")])
        var reported = false
        for _ in 0..<100 where !reported {
            reported = changes.withLock { $0.count } > before
            if !reported { usleep(10_000) }
        }
        #expect(reported, "no change reported after the server restarted")

        let quiet = try RedisServer(notifications: "")
        defer { quiet.remove() }
        let polling = try redisStore(quiet.url)
        defer { polling.close() }
        #expect(!polling.watch { _ in })
    }
}
