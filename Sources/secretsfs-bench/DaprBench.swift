import Foundation

/// Dapr's secrets API beside the file it serves: one mount of the local store with `[api]` on both listeners, and
/// from one Python process (what a Dapr app runs) for each key, cached and fresh: open/read/close of the file, HTTP
/// `GET /v1.0/secrets/...` on one kept-alive connection, and the official SDK's `DaprClient.get_secret` over gRPC.
enum DaprBench {
    static let script = """
        import http.client, json, os, sys, time
        import dapr.version
        from dapr.clients import DaprClient
        seconds = float(sys.argv[1])
        mount, http_port = sys.argv[2], int(sys.argv[3])
        def loop(call):
            samples = []
            end = time.perf_counter() + seconds
            while True:
                begin = time.perf_counter()
                if begin >= end: break
                call()
                samples.append(time.perf_counter() - begin)
            samples.sort()
            return {"ops": len(samples) / seconds, "p50": samples[len(samples) // 2] * 1e6}
        def read_file(key):
            def call():
                with open(os.path.join(mount, "local/production", key), "rb") as f: f.read()
            return call
        connection = http.client.HTTPConnection("127.0.0.1", http_port)
        def get_http(key):
            def call():
                connection.request("GET", "/v1.0/secrets/local/" + key)
                response = connection.getresponse(); response.read()
                assert response.status == 200
            return call
        out = {"sdk": dapr.version.__version__}
        with DaprClient() as client:
            def get_grpc(key):
                return lambda: client.get_secret(store_name="local", key=key)
            for key in ("PASSWORD", "FRESH_PASSWORD"):
                out[key] = {"file": loop(read_file(key)), "http": loop(get_http(key)), "grpc": loop(get_grpc(key))}
        print(json.dumps(out))
        """

    static func run(binary: String, root: String, seconds: Double, python: String?) {
        guard let python else {
            print("dapr: no python given; skipped")
            return
        }
        let mountpoint = root + "/mnt-dapr"
        let http = 20_000 + Int(getpid() % 10_000)
        let grpc = http + 1
        let config = root + "/dapr.toml"
        let text = """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            fresh = ["FRESH_*"]
            [stores.local]
            type = "file"
            files = ["secrets.toml.age"]
            identity = "identity.txt"
            [api]
            dapr_http = "127.0.0.1:\(http)"
            dapr_grpc = "127.0.0.1:\(grpc)"
            """
        try? text.write(toFile: config, atomically: true, encoding: .utf8)
        let probe = mountpoint + "/local/production/PASSWORD"
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: probe) { _ in
            measureAPI(mountpoint: mountpoint, http: http, grpc: grpc, seconds: seconds, python: python)
        }
    }

    static func measureAPI(mountpoint: String, http: Int, grpc: Int, seconds: Double, python: String) {
        let native = measure("file read from Swift (cached key)", path: mountpoint + "/local/production/PASSWORD", threads: 1, duration: seconds)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script, "\(seconds)", mountpoint, "\(http)"]
        var environment = ProcessInfo.processInfo.environment
        environment["DAPR_HTTP_ENDPOINT"] = "http://127.0.0.1:\(http)"
        environment["DAPR_GRPC_ENDPOINT"] = "127.0.0.1:\(grpc)"
        process.environment = environment
        let out = Pipe()
        process.standardOutput = out
        guard (try? process.run()) != nil else { return }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
            let parsed = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else {
            print("dapr: the Python client failed (is `dapr` in the venv? make deps)")
            return
        }
        print("Dapr API (one Python process, Dapr SDK \(parsed["sdk"] as? String ?? "?"); Swift file read of the cached key: \(fmt(native.opsPerSecond, 0))/s, p50 \(fmt(native.p50)) us)")
        for key in ["PASSWORD", "FRESH_PASSWORD"] {
            guard let rows = parsed[key] as? [String: [String: Double]], let file = rows["file"]?["ops"] else { continue }
            print("  \(key == "PASSWORD" ? "cached" : "fresh ") key:")
            for (name, label) in [("file", "file open/read/close"), ("http", "HTTP GET (keep-alive)"), ("grpc", "gRPC GetSecret (SDK)")] {
                guard let row = rows[name], let ops = row["ops"], let p50 = row["p50"] else { continue }
                print("    \(label.padding(toLength: 24, withPad: " ", startingAt: 0)) \(fmt(ops, 0).leftPad(8))/s  p50 \(fmt(p50).leftPad(7)) us  \(fmt(ops / file, 2))x the file")
            }
        }
    }
}
