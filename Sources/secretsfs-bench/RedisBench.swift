import Foundation
import RedisClient

/// The Redis part of `make bench`: the raw HGET round trip on one connection, then fresh Redis files through the
/// mount (1 and 4 threads), then Python: open(path).read() against Dynaconf's get_fresh on the same server.
enum RedisBench {
    static func run(binary: String, root: String, seconds: Double, python: String?) {
        guard let (server, port, connection) = startServer(root: root) else {
            print("redis: redis-server is not installed (make deps) or did not start; skipped")
            return
        }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let value = "not-a-real-password-0123456789"
        _ = try? connection.command("HSET", "DYNACONF_PRODUCTION", "PASSWORD", value, "PORT", "@int 1234")

        print("redis (fresh key, every open asks the server):")
        // Raw round trip: HGET on one connection, the floor any fresh read must pay.
        let rawTrip = { () -> UInt64? in
            let begin = nanoseconds()
            guard (try? connection.command("HGET", "DYNACONF_PRODUCTION", "PASSWORD")) != nil else { return nil }
            return nanoseconds() - begin
        }

        defer { sharedFetches(binary: binary, root: root, port: port, connection: connection, seconds: seconds) }
        FreshBench.withMount(binary: binary, root: root, name: "redis", storeKeys: "url = \"redis://127.0.0.1:\(port)/0\"") { path, _ in
            guard let (raw, one, four) = FreshBench.measureFresh(
                "redis", path: path, seconds: seconds, raw: "raw HGET round trip, 1 connection", rawTrip: rawTrip)
            else { return }
            let scaling = four.opsPerSecond / one.opsPerSecond
            print("  target: 4 threads >= 1.5x one thread: \(fmt(scaling, 2))x -> \(scaling >= 1.5 ? "met" : "NOT met")")
            guard let python else {
                print("  python comparison skipped: no venv python (make bench installs dynaconf and redis into .venv)")
                return
            }
            let script = FreshBench.pythonPreamble + """
                path, port, seconds = os.environ["BENCH_PATH"], int(os.environ["BENCH_PORT"]), float(os.environ["BENCH_SECONDS"])
                settings = Dynaconf(environments=True, env="production", redis_enabled=True,
                                    redis={"host": "127.0.0.1", "port": port, "db": 0, "decode_responses": True})
                assert settings.get_fresh("PASSWORD") == open(path).read()
                files = loop(lambda: open(path).read())
                fresh = loop(lambda: settings.get_fresh("PASSWORD"))
                def raw():
                    with open(path, "rb", buffering=0) as f:
                        f.read()
                unbuffered = loop(raw)
                print(f"{files:.0f} {fresh:.0f} {unbuffered:.0f}")
                """
            guard let numbers = FreshBench.python(
                python, script: script,
                environment: ["BENCH_PATH": path, "BENCH_PORT": String(port), "BENCH_SECONDS": String(seconds)]),
                numbers.count == 3
            else { return }
            print("  python open(path).read() on the fresh file     \(fmt(numbers[0], 0).leftPad(9)) reads/s")
            print("  python open(path, 'rb', buffering=0).read()     \(fmt(numbers[2], 0).leftPad(9)) reads/s (no isatty ioctl)")
            FreshBench.printPythonRatio(
                files: numbers[0], getFresh: numbers[1], rawPerSecond: raw.opsPerSecond, target: 10)
        }
    }

    /// 16 readers of one fresh key for `seconds`, at fresh_max_age 0 (strict, shared fetches) and 100ms: reads/s
    /// and backend fetches/s (HGET rounds from `INFO commandstats`: one round is one HGET per layer, 4 here).
    static func sharedFetches(binary: String, root: String, port: Int, connection: RedisConnection, seconds: Double) {
        func hgets() -> Int {
            guard case .bulk(let raw?)? = try? connection.command("INFO", "commandstats") else { return 0 }
            let line = String(decoding: raw, as: UTF8.self).split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("cmdstat_hget:") } ?? ""
            return Int(line.split(separator: ",").first?.split(separator: "=").last ?? "") ?? 0
        }
        print("shared fetches (redis, 16 readers of one fresh key):")
        for maxAge in ["0", "100ms"] {
            let keys = "url = \"redis://127.0.0.1:\(port)/0\"\nfresh_max_age = \"\(maxAge)\""
            FreshBench.withMount(binary: binary, root: root, name: "redis", storeKeys: keys) { path, _ in
                let before = hgets()
                let (samples, elapsed) = measureSamples("16 readers", path: path, threads: 16, duration: seconds)
                let fetches = Double(hgets() - before) / 4
                let reads = Double(samples.count)
                print("  fresh_max_age = \(maxAge.padding(toLength: 5, withPad: " ", startingAt: 0)) \(fmt(reads / elapsed, 0).leftPad(8)) reads/s, \(fmt(fetches / elapsed, 0).leftPad(6)) fetches/s, \(fmt(fetches / max(reads, 1), 3)) fetches per read")
            }
        }
        print("  (before shared fetches every read was one fetch: 1.000 per read)")
    }

    /// A redis-server on a free port with keyspace notifications on, and a connection to it; nil when missing.
    static func startServer(root: String) -> (server: Process, port: Int, connection: RedisConnection)? {
        guard let serverPath = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }), let port = freePort() else { return nil }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: serverPath)
        server.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--notify-keyspace-events", "Kh", "--dir", root]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        guard (try? server.run()) != nil else { return nil }
        let settings = RedisSettings(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)), timeout: 5)
        for _ in 0..<500 {
            if let connection = try? RedisConnection(settings) { return (server, port, connection) }
            usleep(10_000)
        }
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        return nil
    }

    static func freePort() -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let result = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                guard bind(fd, pointer, length) == 0 else { return -1 }
                return getsockname(fd, pointer, &length)
            }
        }
        return result == 0 ? Int(UInt16(bigEndian: address.sin_port)) : nil
    }
}
