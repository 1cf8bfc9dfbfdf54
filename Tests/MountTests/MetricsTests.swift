import Foundation
import Testing
import TestSupport

@Suite("metrics, health and status", .serialized)
struct MetricsTests {
    @Test("/metrics counts reads by kind; /healthz and status follow a real redis-server going down and back")
    func metricsAndHealth() throws {
        let curl = try requireTool("curl")
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("PASSWORD", "metric-secret-1"), ("DB_HOST", "metric-secret-2")])
        let port = try freePort()
        let config = try fixture.dir.write(
            "metrics.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            fresh = ["DB_*"]
            [stores.redis]
            type = "redis"
            url = "\(server.url)"
            timeout = "1s"
            [metrics]
            listen = "127.0.0.1:\(port)"
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/PASSWORD") == "metric-secret-1")
        #expect(try fs.readText("redis/production/DB_HOST") == "metric-secret-2")
        func get(_ path: String) throws -> (status: String, body: String) {
            var result = try run([curl, "-s", "-m", "5", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"], timeout: 10)
            for _ in 0..<50 where result.stdoutText.hasSuffix("000") {
                usleep(100_000)  // the server starts once the worker serves
                result = try run([curl, "-s", "-m", "5", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"], timeout: 10)
            }
            let text = result.stdoutText
            let split = text.lastIndex(of: "\n") ?? text.endIndex
            return (String(text[text.index(after: split)...]), String(text[..<split]))
        }
        let metrics = try get("/metrics")
        #expect(metrics.status == "200")
        #expect(metrics.body.contains(#"secretsfs_reads_total{top="redis",kind="fresh"} 1"#), "\(metrics.body)")
        #expect(metrics.body.contains(#"secretsfs_reads_total{top="redis",kind="cached"} 1"#))
        #expect(metrics.body.contains(#"secretsfs_backend_seconds_count{top="redis"}"#))
        #expect(metrics.body.contains("secretsfs_live_inodes 2"))
        #expect(!metrics.body.contains("metric-secret"))
        #expect(try get("/healthz").status == "200")
        #expect(try fixture.cli(["status", "--config", config]).stdoutText.contains("redis: up"))

        server.stop()
        #expect(throws: FSError(code: EIO)) { try fs.read("redis/production/DB_HOST") }
        let down = try get("/healthz")
        #expect(down.status == "503" && down.body.contains("failing: redis"))
        let status = try fixture.cli(["status", "--config", config])
        #expect(status.status == 1 && status.stdoutText.contains("redis: FAILING"))
        #expect(try get("/metrics").body.contains(#"secretsfs_backend_errors_total{top="redis"}"#))

        try server.start()
        try server.hset("DYNACONF_PRODUCTION", [("DB_HOST", "metric-secret-2")])
        #expect(try fs.readText("redis/production/DB_HOST", until: "metric-secret-2", within: 10) == "metric-secret-2")
        #expect(try get("/healthz").status == "200")
    }

    @Test("a unix socket listener; status counts worker restarts; a config without [metrics] makes status exit 2")
    func unixSocket() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nA = \"a\"\n")
        let socket = fixture.dir.file("metrics.sock")
        let config = try fixture.writeConfig(extra: "[metrics]\nlisten = \"unix:\(socket)\"\n")
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("local/production/A") == "a")
        var result = try fixture.cli(["status", "--config", config])
        for _ in 0..<50 where result.status != 0 {
            usleep(100_000)
            result = try fixture.cli(["status", "--config", config])
        }
        #expect(result.status == 0 && result.stdoutText.contains("local: up"))
        #expect(result.stdoutText.contains("worker restarts: 0"), "\(result.stdoutText)")
        // Every restart is counted: the next worker says how many workers were replaced before it.
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        try waitUntil("status counts the restart", seconds: 10) {
            (try? fixture.cli(["status", "--config", config]))?.stdoutText.contains("worker restarts: 1") ?? false
        }
        let without = try fixture.cli(["status", "--config", try fixture.writeConfig()])
        #expect(without.status == 2)
    }
}
