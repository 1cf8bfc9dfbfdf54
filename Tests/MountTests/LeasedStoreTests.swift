import Foundation
import Locking
import Testing
import TestSupport

/// Leased secrets (`type = "vault-database"`, `type = "vault-pki"`) against a real OpenBao (`bao server -dev`, the
/// builtin postgresql-database-plugin and the pki engine) and a real PostgreSQL: psql logs in with the mounted
/// credentials while leases renew and rotate, the lease is revoked on unmount, and openssl checks certificates.
@Suite("leased secrets", .serialized)
struct LeasedStoreTests {
    static let adminPassword = "admin-pw-for-the-engine"

    /// OpenBao's database engine over `postgres`, with a role `app` of short leases.
    static func databaseEngine(_ bao: BaoServer, _ postgres: PostgresServer, ttl: String, maxTTL: String) throws {
        try postgres.createUser("vaultadmin", password: adminPassword, superuser: true)
        try bao.cli(["secrets", "enable", "database"])
        try bao.cli([
            "write", "database/config/pg", "plugin_name=postgresql-database-plugin", "allowed_roles=app",
            "connection_url=postgresql://{{username}}:{{password}}@127.0.0.1:\(postgres.port)/postgres?sslmode=disable",
            "username=vaultadmin", "password=\(adminPassword)", "verify_connection=true",
        ])
        try bao.cli([
            "write", "database/roles/app", "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";",
            "default_ttl=\(ttl)", "max_ttl=\(maxTTL)",
        ])
    }

    /// A config with a `vault-database` store `db` (role `app`) over `bao`, a 10 minute cache, `[metrics]` on a free
    /// port, and `store` more lines of the store's table.
    static func databaseConfig(_ fixture: Fixture, _ bao: BaoServer, store: String) throws -> String {
        let token = try fixture.dir.write("vault-token", "root\n")
        return try fixture.dir.write("leased.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            [metrics]
            listen = "127.0.0.1:\(try freePort())"
            [stores.db]
            type = "vault-database"
            address = "\(bao.address)"
            token_file = "\(token)"
            roles = ["app"]
            \(store)
            """)
    }

    static func dsn(_ postgres: PostgresServer, _ username: String, _ password: String) -> String {
        "postgresql://\(username):\(password)@127.0.0.1:\(postgres.port)/postgres?sslmode=disable"
    }

    static func login(_ dsn: String) throws -> Bool {
        let result = try run(["psql", dsn, "-w", "-tAc", "SELECT 1"], environment: ["PGCONNECT_TIMEOUT": "5"], timeout: 20)
        return result.status == 0 && result.stdoutText == "1\n"
    }

    @Test("vault-database: psql logs in with the mounted username and password (one lease per role directory); the lease renews, rotates before max_ttl with 8 readers logging in continuously and none failing, and is revoked on unmount")
    func database() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        let bao = try BaoServer()
        defer { bao.remove() }
        try Self.databaseEngine(bao, postgres, ttl: "6s", maxTTL: "14s")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let metricsPort = try freePort()
        let config = try fixture.dir.write("leased.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            [metrics]
            listen = "127.0.0.1:\(metricsPort)"
            [stores.db]
            type = "vault-database"
            address = "\(bao.address)"
            token_file = "\(token)"
            roles = ["app"]
            renew_at = 0.5
            rotate_before = 0.3

            [[files]]
            path = "db/app/dsn"
            template = "postgresql://{{url(username)}}:{{url(password)}}@127.0.0.1:\(postgres.port)/postgres?sslmode=disable"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.list("db").contains("app"), "a role is a directory")
        let username = try fs.readText("db/app/username")
        let password = try fs.readText("db/app/password")
        #expect(!username.isEmpty && !password.isEmpty)
        #expect(try Self.login("postgresql://\(username):\(password)@127.0.0.1:\(postgres.port)/postgres?sslmode=disable"),
                "psql logs in with the mounted username and password")
        let firstDSN = try fs.readText("db/app/dsn")
        #expect(firstDSN.contains(username), "the rendered DSN holds the same lease")

        // Eight readers log in with the rendered DSN (one snapshot per open) while the lease renews and rotates.
        let tally = LoginTally()
        let group = DispatchGroup()
        for _ in 0..<8 {
            group.enter()
            Thread {
                defer { group.leave() }
                while tally.running.withLock({ $0 }) {
                    let dsn = (try? fs.readText("db/app/dsn")) ?? ""
                    let ok = (try? Self.login(dsn)) ?? false
                    tally.results.withLock { $0.append((ok, dsn.contains(username))) }
                }
            }.start()
        }
        try fs.waitForLog("lease renewed", within: 30)
        try fs.waitForLog("rotated to a new lease before the old one expires", within: 30)
        try waitUntil("a reader logs in with the new lease", seconds: 20) {
            tally.results.withLock { $0.contains { $0.ok && !$0.old } }
        }
        tally.running.withLock { $0 = false }
        #expect(group.wait(timeout: .now() + 60) == .success)
        let results = tally.results.withLock { $0 }
        let failed = results.filter { !$0.ok }.count
        #expect(failed == 0 && results.count >= 8, "failed logins: \(failed) of \(results.count)")
        let newUser = try fs.readText("db/app/username")
        #expect(newUser != username, "the role directory flipped to the new lease")
        let lastDSN = try fs.readText("db/app/dsn")
        #expect(lastDSN.contains(newUser))

        // Lease metrics (names and counts, never a value).
        let metrics = try run([try requireTool("curl"), "-s", "-m", "5", "http://127.0.0.1:\(metricsPort)/metrics"], timeout: 10).stdoutText
        for line in [#"secretsfs_lease_events_total{store="db",role="app",event="minted"} "#,
                     #"secretsfs_lease_events_total{store="db",role="app",event="rotated"} "#,
                     #"secretsfs_lease_events_total{store="db",role="app",event="renewed"}"#,
                     #"secretsfs_lease_expiry_seconds{store="db",role="app"}"#] {
            #expect(metrics.contains(line), "/metrics lacks \(line)")
        }
        #expect(!metrics.contains(password))
        let status = try fixture.cli(["status", "--config", config])
        #expect(status.stdoutText.contains("lease db/app: "), "status lists the lease: \(status.stdoutText)")
        #expect(!status.stdoutText.contains(password) && !status.stdoutText.contains(newUser))

        // Unmount: the store revokes its lease, and its user can no longer log in.
        fs.stop()
        try fs.waitForLog("lease revoked", within: 20)
        let afterRevoke = try Self.login(lastDSN)
        #expect(!afterRevoke, "the revoked lease's user still logs in")
        #expect(!fs.log.contains(password), "no value in the log")
    }

    @Test("a worker crash and a reload keep the lease: the next worker adopts and renews it (one creds call and renewals in OpenBao's audit log), psql logs in with it throughout; stop revokes it")
    func leaseOutlivesWorkers() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        let bao = try BaoServer(audit: true)
        defer { bao.remove() }
        try Self.databaseEngine(bao, postgres, ttl: "6s", maxTTL: "10m")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try Self.databaseConfig(fixture, bao, store: "renew_at = 0.5")
        let fs = try fixture.mount(config: config)
        let username = try fs.readText("db/app/username")
        let password = try fs.readText("db/app/password")
        let dsn = Self.dsn(postgres, username, password)
        #expect(try Self.login(dsn))
        #expect(bao.requests(path: "database/creds/app") == 1)
        try fs.waitForLog("snapshot written with the leases for the next worker")

        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        try fs.waitForLog("kept the previous worker's lease")
        #expect(try fs.readText("db/app/username") == username, "the same lease after a worker crash")
        #expect(try fs.readText("db/app/password") == password)
        let renewalsBefore = bao.requests(path: "sys/leases/renew")
        try waitUntil("the new worker renews the adopted lease", seconds: 20) {
            bao.requests(path: "sys/leases/renew") > renewalsBefore
        }

        try fs.waitForLog("snapshot written with the leases for the next worker", count: 2)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        try fs.waitForLog("kept the previous worker's lease", count: 2)
        #expect(try fs.readText("db/app/username") == username, "the same lease after a reload")
        let renewalsAfterReload = bao.requests(path: "sys/leases/renew")
        try waitUntil("the reloaded worker renews it too", seconds: 20) {
            bao.requests(path: "sys/leases/renew") > renewalsAfterReload
        }
        #expect(bao.requests(path: "database/creds/app") == 1, "no second creds call across a crash and a reload")
        #expect(try Self.login(dsn), "the kept lease still logs in")

        fs.stop()
        try fs.waitForLog("lease revoked", within: 20)
        #expect(!(try Self.login(dsn)), "the revoked lease's user still logs in")
        #expect(!fs.log.contains(password), "no value in the log")
    }

    @Test("idle_revoke: a lease read more often than idle_revoke is kept; one nobody reads for idle_revoke is revoked (its user can no longer log in), and the next read mints a new one")
    func idleRevoke() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        let bao = try BaoServer(audit: true)
        defer { bao.remove() }
        try Self.databaseEngine(bao, postgres, ttl: "2m", maxTTL: "10m")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try Self.databaseConfig(fixture, bao, store: "idle_revoke = \"4s\"")
        let fs = try fixture.mount(config: config)
        let username = try fs.readText("db/app/username")
        let password = try fs.readText("db/app/password")
        let dsn = Self.dsn(postgres, username, password)
        #expect(try Self.login(dsn))
        // A reader opening the file every half second for longer than idle_revoke keeps the lease.
        let until = Date().addingTimeInterval(7)
        while Date() < until {
            #expect(try fs.readText("db/app/username") == username)
            usleep(500_000)
        }
        #expect(!fs.log.contains("revoked a lease nobody read"), "a lease in use was revoked as idle")
        #expect(bao.requests(path: "database/creds/app") == 1)
        // Nobody reads: revoked.
        try fs.waitForLog("revoked a lease nobody read for idle_revoke", within: 20)
        #expect(!(try Self.login(dsn)), "the idle lease's user still logs in")
        let next = try fs.readText("db/app/username")
        #expect(next != username, "the next read mints a new lease")
        let nextDSN = Self.dsn(postgres, next, try fs.readText("db/app/password"))
        #expect(try Self.login(nextDSN))
        #expect(bao.requests(path: "database/creds/app") == 2)
        #expect(!fs.log.contains(password))
    }

    @Test("lease_per = \"unit\": processes of two units (cgroups) get a lease each, each logs in with its own, a unit reading again keeps its lease; when one cgroup is removed its lease is revoked and the other keeps working")
    func leasePerUnit() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        let bao = try BaoServer(audit: true)
        defer { bao.remove() }
        try Self.databaseEngine(bao, postgres, ttl: "2m", maxTTL: "10m")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try Self.databaseConfig(fixture, bao, store: "lease_per = \"unit\"")
        let fs = try fixture.mount(config: config)
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let unitA = try makeCgroup("secretsfs-test-\(tag)-a.scope")
        defer { rmdir(unitA) }
        let unitB = try makeCgroup("secretsfs-test-\(tag)-b.scope")
        defer { rmdir(unitB) }
        func credentials(_ unit: String) throws -> (String, String) {
            let user = try catInCgroup(fs.path("db/app/username"), cgroup: unit)
            let password = try catInCgroup(fs.path("db/app/password"), cgroup: unit)
            #expect(user.status == 0 && password.status == 0)
            return (user.text, password.text)
        }
        func dsn(_ pair: (String, String)) -> String { Self.dsn(postgres, pair.0, pair.1) }
        let a = try credentials(unitA)
        let b = try credentials(unitB)
        #expect(!a.0.isEmpty && !b.0.isEmpty && a.0 != b.0, "a lease per unit")
        #expect(try Self.login(dsn(a)) && Self.login(dsn(b)), "each unit logs in with its own")
        #expect(try credentials(unitA) == a, "a unit reading again keeps its lease")
        #expect(bao.requests(path: "database/creds/app") == 2)
        let status = try fixture.cli(["status", "--config", config])
        #expect(status.stdoutText.contains("lease db/app for /secretsfs-test-\(tag)-a.scope"), "\(status.stdoutText)")

        #expect(rmdir(unitA) == 0, "the unit's cgroup goes: errno \(errno)")
        try fs.waitForLog("revoked the lease of a unit or pod that is gone", within: 20)
        #expect(!(try Self.login(dsn(a))), "the gone unit's lease still logs in")
        #expect(try Self.login(dsn(b)), "the other unit's lease keeps working")
        #expect(try credentials(unitB) == b)
        #expect(!fs.log.contains(a.1) && !fs.log.contains(b.1), "no value in the log")
    }

    @Test("a role the engine does not have is EIO on its own directory only; a token the engine refuses is EACCES; the other role serves")
    func failures() throws {
        let postgres = try PostgresServer()
        defer { postgres.remove() }
        let bao = try BaoServer()
        defer { bao.remove() }
        try Self.databaseEngine(bao, postgres, ttl: "1h", maxTTL: "2h")
        let limited = try bao.cli(["token", "create", "-policy=default", "-field=token"]).stdoutText
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let weak = try fixture.dir.write("weak-token", limited + "\n")
        let config = try fixture.dir.write("leased.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [stores.db]
            type = "vault-database"
            address = "\(bao.address)"
            token_file = "\(token)"
            roles = ["app", "ghost"]
            [stores.weak]
            type = "vault-database"
            address = "\(bao.address)"
            token_file = "\(weak)"
            roles = ["app"]
            """)
        let fs = try fixture.mount(config: config)
        #expect(throws: FSError(code: EIO)) { try fs.read("db/ghost/username") }
        #expect(throws: FSError(code: EACCES)) { try fs.read("weak/app/username") }
        let username = try fs.readText("db/app/username")
        #expect(!username.isEmpty, "the configured role serves")
        #expect(!fs.log.contains(limited), "no token in the log")
    }

    /// OpenBao's pki engine with a root CA and a role `web` for example.test names.
    static func pkiEngine(_ bao: BaoServer) throws {
        try bao.cli(["secrets", "enable", "pki"])
        try bao.cli(["secrets", "tune", "-max-lease-ttl=87600h", "pki"])
        try bao.cli(["write", "pki/root/generate/internal", "common_name=Test Root", "ttl=87600h"])
        try bao.cli(["write", "pki/roles/web", "allowed_domains=example.test", "allow_subdomains=true", "max_ttl=72h"])
    }

    /// `$1` a PEM bundle, `$2` the issuing CA: the first certificate's modulus is the key's, and it verifies.
    static let modulusCheck = #"a=$(openssl x509 -noout -modulus -in "$1") && b=$(openssl rsa -noout -modulus -in "$1" 2>/dev/null) && [ "$a" = "$b" ] && openssl verify -CAfile "$2" "$1" >/dev/null && openssl x509 -noout -serial -in "$1""#

    @Test("vault-pki: the pair rotates before the certificate's end under 8 readers; every read of the bundle has a certificate whose modulus is its key's and that verifies against the issuing CA")
    func pkiRotation() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        try Self.pkiEngine(bao)
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let config = try fixture.dir.write("pki.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            [stores.certs]
            type = "vault-pki"
            address = "\(bao.address)"
            token_file = "\(token)"
            rotate_before = 0.4
            [stores.certs.roles.web]
            common_name = "web.example.test"
            ttl = "8s"

            [[files]]
            path = "certs/web/bundle.pem"
            template = "{{pem(certificate, private_key)}}"
            """)
        let fs = try fixture.mount(config: config)
        let work = try TemporaryDirectory()
        defer { work.remove() }
        try Data(try fs.read("certs/web/issuing_ca")).write(to: URL(fileURLWithPath: work.file("ca.pem")))
        let checks = Locked<[(ok: Bool, serial: String)]>([])
        let running = Locked(true)
        let group = DispatchGroup()
        for reader in 0..<8 {
            group.enter()
            Thread {
                defer { group.leave() }
                let file = work.file("bundle-\(reader).pem")
                while running.withLock({ $0 }) {
                    guard let bytes = try? fs.read("certs/web/bundle.pem"),
                        (try? Data(bytes).write(to: URL(fileURLWithPath: file))) != nil,
                        let result = try? run(["sh", "-c", Self.modulusCheck, "check", file, work.file("ca.pem")], timeout: 20)
                    else {
                        checks.withLock { $0.append((false, "")) }
                        continue
                    }
                    checks.withLock { $0.append((result.status == 0, result.stdoutText)) }
                }
            }.start()
        }
        try fs.waitForLog("rotated to a new lease before the old one expires", count: 2, within: 40)
        try waitUntil("reads after the second rotation", seconds: 20) {
            Set(checks.withLock { $0 }.map(\.serial)).count >= 3
        }
        running.withLock { $0 = false }
        #expect(group.wait(timeout: .now() + 60) == .success)
        let results = checks.withLock { $0 }
        let failed = results.filter { !$0.ok }.count
        #expect(failed == 0 && results.count >= 8, "reads whose certificate and key do not belong together: \(failed) of \(results.count)")
        #expect(Set(results.map(\.serial)).count >= 3, "three certificates seen in turn")
        let key = try fs.readText("certs/web/private_key")
        #expect(!fs.log.contains(key.split(separator: "\n").dropFirst().first.map(String.init) ?? "-"), "no key in the log")
    }

    @Test("a certificate that can no longer be replaced (its PKI role deleted) is served until its expiration and never after: then EIO on its directory only")
    func servedUntilExpiryNeverPast() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        try Self.pkiEngine(bao)
        try bao.cli(["write", "pki/roles/api", "allowed_domains=example.test", "allow_subdomains=true", "max_ttl=72h"])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let config = try fixture.dir.write("pki.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            stale_if_error = "10m"
            [stores.certs]
            type = "vault-pki"
            address = "\(bao.address)"
            token_file = "\(token)"
            rotate_before = 0.5
            [stores.certs.roles.web]
            common_name = "web.example.test"
            ttl = "8s"
            [stores.certs.roles.api]
            common_name = "api.example.test"
            ttl = "1h"
            """)
        let fs = try fixture.mount(config: config)
        let expiration = try #require(Int(try fs.readText("certs/web/expiration").trimmingCharacters(in: .whitespacesAndNewlines)))
        _ = try fs.readText("certs/api/certificate")
        // No more certificates for web: every rotation from now on fails.
        try bao.cli(["delete", "pki/roles/web"])
        var servedAfterExpiry = 0
        var served = 0
        while Int(Date().timeIntervalSince1970) <= expiration + 3 {
            let before = Int(Date().timeIntervalSince1970)
            if (try? fs.read("certs/web/certificate")) != nil {
                served += 1
                // A read that began after the certificate's end (whole seconds; its end is a whole second too).
                if before > expiration { servedAfterExpiry += 1 }
            }
            usleep(100_000)
        }
        #expect(served > 0, "the certificate is served while it is valid")
        #expect(servedAfterExpiry == 0, "served after its expiration \(servedAfterExpiry) times")
        #expect(throws: FSError(code: EIO)) { try fs.read("certs/web/certificate") }
        try fs.waitForLog("minting the next lease failed; the current one serves until it expires")
        #expect(fs.log.components(separatedBy: "minting the next lease failed").count == 2, "logged once, not per retry")
        #expect(try !fs.readText("certs/api/certificate").isEmpty, "the other role serves on")
    }

    @Test("vault-pki: certificate, private_key, ca_chain and issuing_ca from one issue; openssl verifies the chain and matches the key; a PEM bundle template renders them from one snapshot")
    func pki() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        try Self.pkiEngine(bao)
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let token = try fixture.dir.write("vault-token", "root\n")
        let config = try fixture.dir.write("pki.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [stores.certs]
            type = "vault-pki"
            address = "\(bao.address)"
            token_file = "\(token)"
            [stores.certs.roles.web]
            common_name = "web.example.test"
            alt_names = ["www.example.test"]
            ttl = "1h"

            [[files]]
            path = "certs/web/bundle.pem"
            template = "{{pem(certificate, private_key)}}"
            """)
        let fs = try fixture.mount(config: config)
        let names = Set(try fs.list("certs/web"))
        #expect(names.isSuperset(of: ["certificate", "private_key", "ca_chain", "issuing_ca", "serial_number", "expiration", "bundle.pem"]), "\(names)")
        let copies = try TemporaryDirectory()
        defer { copies.remove() }
        for name in ["certificate", "private_key", "issuing_ca", "bundle.pem"] {
            try Data(try fs.read("certs/web/\(name)")).write(to: URL(fileURLWithPath: copies.file(name)))
        }
        let verified = try run(["openssl", "verify", "-CAfile", copies.file("issuing_ca"), copies.file("certificate")], timeout: 20)
        #expect(verified.status == 0 && verified.stdoutText.contains(": OK"), "\(verified.stdoutText) \(verified.stderr.prefix(200))")
        let subject = try run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName", "-in", copies.file("certificate")], timeout: 20)
        #expect(subject.stdoutText.contains("web.example.test") && subject.stdoutText.contains("www.example.test"))
        let pair = try run(["sh", "-c", TemplateMountTests.pairCheck, "check", copies.file("bundle.pem")], timeout: 20)
        #expect(pair.status == 0, "the bundle's certificate and key belong together")
        let issued = try String(contentsOfFile: copies.file("certificate"), encoding: .utf8)
        #expect(try fs.readText("certs/web/certificate") == issued, "cached: the same issue until it nears its end")
    }
}

/// What the login readers saw, shared with their threads.
final class LoginTally: Sendable {
    let results = Locked<[(ok: Bool, old: Bool)]>([])
    let running = Locked(true)
}
