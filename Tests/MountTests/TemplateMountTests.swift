import Foundation
import Locking
import Testing
import TestSupport

/// Templates (`[[files]]` with `template` / `template_file`) through a real mount, read by real consumers: psql
/// logging in to a real PostgreSQL with a rendered DSN and a rendered `.pgpass`, Python's json, and openssl checking
/// that a rendered certificate and key belong together while the pair rotates under readers.
@Suite("templates through the mount", .serialized)
struct TemplateMountTests {
    /// Every character a DSN, a pgpass line and JSON must escape (and TOML and SQL on the way in).
    static let password = ##"p@ss:w/rd\ 'q"#%?&=ü"##

    static func tomlString(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// Loads the rendered JSON and compares it with the expected values; prints key names only.
    static let jsonChecker = #"""
        import json, sys
        got = json.load(open(sys.argv[1]))
        want = json.load(open(sys.argv[2]))
        bad = [k for k in want if k not in got or got[k] != want[k] or type(got[k]) != type(want[k])]
        print("OK" if not bad and set(got) == set(want) else "differs: " + ", ".join(sorted(bad)))
        """#

    @Test("a DSN and a pgpass line log psql in to a real PostgreSQL; a JSON template read by Python; a key of another store; a change of any used key reaches the cached file by notice; audit names every key; a missing key is ENOENT, logged with the file and the key; get and check")
    func consumers() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        try postgres.createUser("app", password: Self.password)
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", """
            [production]
            DB_USER = "app"
            DB_PASS = \(Self.tomlString(Self.password))
            DB_PORT = \(postgres.port)
            APP_NAME = "billing"
            """)
        try fixture.writeEncrypted("shared.toml.age", "[production]\nDB_HOST = \"127.0.0.1\"\n")
        _ = try fixture.dir.write("app.json.tmpl", """
            {{! Typed: the port stays a number. }}
            {
              "name": {{json(APP_NAME)}},
              "password": {{json(DB_PASS)}},
              "port": {{json(DB_PORT)}}
            }

            """)
        let config = try fixture.writeConfig(ttl: "10m", extra: """
            [stores.shared]
            type = "file"
            files = ["shared.toml.age"]
            identity = "identity.txt"
            recipients = ["\(fixture.identity.recipient)"]

            [[files]]
            path = "local/production/db.url"
            template = "postgresql://{{url(DB_USER)}}:{{url(DB_PASS)}}@{{shared/production/DB_HOST}}:{{DB_PORT}}/app?sslmode=disable"
            [[files]]
            path = "local/production/pgpass"
            template = "{{shared/production/DB_HOST}}:{{DB_PORT}}:app:{{pgpass(DB_USER)}}:{{pgpass(DB_PASS)}}\\n"
            [[files]]
            path = "local/production/app.json"
            template_file = "app.json.tmpl"
            [[files]]
            path = "local/production/broken.txt"
            template = "{{DB_USER}}:{{NOT_THERE}}"

            [audit]
            path = "\(fixture.dir.file("audit.jsonl"))"
            paths = ["local/production/db.url"]
            """)
        let fs = try fixture.mount(config: config)
        #expect(Set(try fs.list("local/production")).isSuperset(of: ["db.url", "pgpass", "app.json", "broken.txt", "DB_PASS"]))

        // psql with the rendered DSN (libpq decodes the percent-escapes), then with the rendered .pgpass read
        // straight from the mount (libpq unescapes \: and \\ and insists on a 0600-or-stricter file).
        let dsn = try fs.readText("local/production/db.url")
        #expect(try fs.status("local/production/db.url").st_size == dsn.utf8.count)
        let viaDSN = try run(["psql", dsn, "-w", "-tAc", "SELECT current_user"], environment: ["PGCONNECT_TIMEOUT": "10"], timeout: 30)
        #expect(viaDSN.status == 0 && viaDSN.stdoutText == "app\n", "psql with the DSN: \(viaDSN.stderr.suffix(300))")
        let viaPgpass = try run(
            ["psql", "-h", "127.0.0.1", "-p", String(postgres.port), "-U", "app", "-d", "app", "-w", "-tAc", "SELECT current_user"],
            environment: ["PGPASSFILE": fs.path("local/production/pgpass"), "PGCONNECT_TIMEOUT": "10"], timeout: 30)
        #expect(viaPgpass.status == 0 && viaPgpass.stdoutText == "app\n", "psql with the pgpass file: \(viaPgpass.stderr.suffix(300))")
        // A wrong password is refused: the logins above prove the rendered one.
        let wrong = try run(
            ["psql", "postgresql://app:nope@127.0.0.1:\(postgres.port)/app?sslmode=disable", "-w", "-tAc", "SELECT 1"], timeout: 30)
        #expect(wrong.status != 0)

        let copies = try TemporaryDirectory()
        defer { copies.remove() }
        try Data(try fs.read("local/production/app.json")).write(to: URL(fileURLWithPath: copies.file("app.json")))
        let want: [String: Any] = ["name": "billing", "password": Self.password, "port": postgres.port]
        try JSONSerialization.data(withJSONObject: want).write(to: URL(fileURLWithPath: copies.file("want.json")))
        let script = try copies.write("check.py", Self.jsonChecker)
        let python = packageRoot() + "/.venv/bin/python"
        let checked = try run([python, script, copies.file("app.json"), copies.file("want.json")], timeout: 60)
        #expect(checked.stdoutText == "OK\n", "\(checked.stdoutText) \(checked.stderr.suffix(300))")

        // A missing key fails the open, never an empty hole; logged with the file and the key, not the values.
        #expect(try fs.errnoOf("local/production/broken.txt") { open($0, O_RDONLY) } == ENOENT)
        try fs.waitForLog("cannot render 'local/production/broken.txt'")
        #expect(fs.log.contains("'NOT_THERE'"))

        let audit = (try? String(contentsOfFile: fixture.dir.file("audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(audit.contains(#""path":"local/production/db.url""#)
            && audit.contains(#""keys":["DB_USER","DB_PASS","shared/production/DB_HOST","DB_PORT"]"#), "the audit line names every key used")
        let get = try fixture.cli(["get", "--config", config, "local/production/db.url"])
        #expect(get.status == 0 && get.stdoutText == dsn, "get renders the same bytes: \(get.stderr.suffix(300))")
        let check = try fixture.cli(["check", "--config", config])
        #expect(check.stdoutText.contains("db.url (template, 0:0 400): DB_USER, DB_PASS, shared/production/DB_HOST, DB_PORT"),
                "check lists the template's keys")

        // A key of its own env changes, then one of another store: each reaches the cached file (ttl 10 min) by notice.
        let rename = try fixture.cli(["set", "--config", config, "local", "production", "APP_NAME=renamed"])
        #expect(rename.status == 0, "\(rename.stderr)")
        try waitUntil("app.json shows the change", seconds: 10) {
            ((try? fs.readText("local/production/app.json")) ?? "").contains("\"renamed\"")
        }
        let move = try fixture.cli(["set", "--config", config, "shared", "production", "DB_HOST=localhost"])
        #expect(move.status == 0, "\(move.stderr)")
        try waitUntil("db.url shows the other store's change", seconds: 10) {
            ((try? fs.readText("local/production/db.url")) ?? "").contains("@localhost:")
        }
        for output in [fs.log, check.stdoutText, check.stderr, get.stderr, audit] {
            #expect(!output.contains("w/rd"), "no value in logs or output")
        }
    }

    @Test("a template that uses a fresh key renders from one view fetched at every open; one of cached keys waits for its ttl")
    func fresh() throws {
        let redis = try RedisServer(notifications: "")
        defer { redis.remove() }
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "n-1"), ("DB_PASS", "p-1")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeRedisConfig(redis, store: "fresh = [\"DB_*\"]\ntimeout = \"1s\"", extra: """
            [[files]]
            path = "redis/production/both.txt"
            template = "{{NAME}} {{DB_PASS}}"
            [[files]]
            path = "redis/production/name.txt"
            template = "{{NAME}}"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/both.txt") == "n-1 p-1")
        #expect(try fs.readText("redis/production/name.txt") == "n-1")
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "n-2"), ("DB_PASS", "p-2")])
        #expect(try fs.readText("redis/production/both.txt") == "n-2 p-2", "fresh: both keys from one view fetched now")
        #expect(try fs.readText("redis/production/name.txt") == "n-1", "cached: until its ttl (no notices here)")
    }

    @Test("a template_file is read again on reload (SIGHUP): the new rendering serves; a broken one is refused with its line and column and the old one keeps serving")
    func reloadTemplateFile() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nDB_USER = \"app\"\nDB_PORT = 5432\n")
        let template = try fixture.dir.write("db.tmpl", "user={{DB_USER}}\n")
        let config = try fixture.writeConfig(ttl: "10m", extra: """
            [[files]]
            path = "local/*/db.conf"
            template_file = "db.tmpl"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("local/production/db.conf") == "user=app\n")
        try "user={{DB_USER}}\nport={{DB_PORT}}\n".write(toFile: template, atomically: true, encoding: .utf8)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        #expect(try fs.readText("local/production/db.conf", until: "user=app\nport=5432\n", within: 10) == "user=app\nport=5432\n",
                "the reloaded template serves")
        try "user={{DB_USER}}\n{{port(DB_PORT)}}\n".write(toFile: template, atomically: true, encoding: .utf8)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reload refused; the running worker keeps serving")
        #expect(fs.log.contains("db.tmpl:2:3: no helper 'port'"), "the template's own line and column")
        #expect(try fs.readText("local/production/db.conf") == "user=app\nport=5432\n")
        let check = try fixture.cli(["check", "--config", config])
        #expect(check.status == 2 && check.stderr.contains("db.tmpl:2:3:"), "check: \(check.status) \(check.stderr.suffix(200))")
    }

    /// Checks a bundle with openssl: the certificate's public key must be the private key's. Prints the
    /// certificate's subject when they match; fails otherwise.
    static let pairCheck = #"a=$(openssl x509 -noout -pubkey -in "$1") && b=$(openssl pkey -pubout -in "$1") && [ "$a" = "$b" ] && openssl x509 -noout -subject -nameopt RFC2253 -in "$1""#

    @Test("a certificate, its chain and its key in one PEM bundle always belong together while the pair rotates under 8 readers (openssl checks every read)")
    func rotatingPair() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        let work = try TemporaryDirectory()
        defer { work.remove() }
        let generations = 8
        var pairs: [(cert: String, key: String)] = []
        for generation in 0..<generations {
            let key = work.file("key-\(generation).pem")
            let cert = work.file("cert-\(generation).pem")
            let made = try run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=gen-\(generation)"], timeout: 30)
            #expect(made.status == 0, "\(made.stderr.suffix(200))")
            pairs.append((try String(contentsOfFile: cert, encoding: .utf8), try String(contentsOfFile: key, encoding: .utf8)))
        }
        try redis.hset("DYNACONF_PRODUCTION", [("TLS_CERT", pairs[0].cert), ("TLS_KEY", pairs[0].key), ("TLS_CHAIN", pairs[0].cert)])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeRedisConfig(redis, store: "timeout = \"2s\"", extra: """
            [[files]]
            path = "redis/production/tls.pem"
            template = "{{pem(TLS_CERT, TLS_CHAIN, TLS_KEY)}}"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/tls.pem").hasPrefix("-----BEGIN CERTIFICATE-----"))
        try redis.waitForPatternSubscriptions()

        let tally = ReaderTally()
        let finished = DispatchGroup()
        for reader in 0..<8 {
            finished.enter()
            let copy = work.file("read-\(reader).pem")
            Thread {
                defer { finished.leave() }
                while tally.running.withLock({ $0 }) {
                    do {
                        let bytes = try fs.read("redis/production/tls.pem", timeout: 10)
                        try Data(bytes).write(to: URL(fileURLWithPath: copy))
                        let checked = try run(["sh", "-c", Self.pairCheck, "check", copy], timeout: 30)
                        // openssl prints "subject=CN=gen-N".
                        let subject = checked.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
                            .replacingOccurrences(of: "subject=", with: "")
                        if checked.status == 0, subject.hasPrefix("CN=gen-") {
                            tally.seen.withLock { $0[subject, default: 0] += 1 }
                        } else {
                            tally.failures.withLock { $0.append("reader \(reader): pair check failed (status \(checked.status), \(checked.stderr.prefix(200)))") }
                        }
                    } catch {
                        tally.failures.withLock { $0.append("reader \(reader): \(error)") }
                    }
                }
            }.start()
        }
        defer {
            tally.running.withLock { $0 = false }
            _ = finished.wait(timeout: .now() + 60)
        }
        // Each rotation is one HSET of both keys (one change); the next waits until a reader has seen this one.
        for generation in 1..<generations {
            try redis.hset("DYNACONF_PRODUCTION", [
                ("TLS_CERT", pairs[generation].cert), ("TLS_KEY", pairs[generation].key), ("TLS_CHAIN", pairs[generation].cert),
            ])
            do {
                try waitUntil("a reader sees generation \(generation)", seconds: 15, every: 0.01) {
                    tally.seen.withLock { $0["CN=gen-\(generation)"] ?? 0 } > 0
                }
            } catch {
                Issue.record("seen \(tally.seen.withLock { $0 }), failures \(tally.failures.withLock { $0.prefix(3) })")
                throw error
            }
        }
        tally.running.withLock { $0 = false }
        #expect(finished.wait(timeout: .now() + 60) == .success)
        let counts = tally.seen.withLock { $0 }
        #expect(tally.failures.withLock { $0 }.isEmpty, "\(tally.failures.withLock { $0.prefix(5) })")
        #expect(counts.count == generations, "every generation was read: \(counts.keys.sorted())")
        #expect(counts.values.reduce(0, +) >= 2 * generations, "reads: \(counts.values.reduce(0, +))")
    }
}

/// What the pair readers found, shared with their threads.
final class ReaderTally: Sendable {
    let seen = Locked<[String: Int]>([:])
    let failures = Locked<[String]>([])
    let running = Locked(true)
}
