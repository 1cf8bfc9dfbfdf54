import Glibc
import Hummingbird
import Logging
import Metrics
import Prometheus
import SecretsCore

/// `[metrics]`: `GET /metrics` (Prometheus text, from swift-metrics through swift-prometheus), `GET /healthz`
/// (200 when every store answered its last call, 503 naming the failing ones) and `GET /status` (JSON for
/// `secretsfs status`), served by Hummingbird on a TCP address or a unix socket. Never a value, never a label
/// derived from a value: labels are store and scope names and kinds.
public enum StatusServer {
    /// Makes swift-metrics report into a Prometheus registry; call once, before any metric is created.
    public static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Backend round trips: 100 us to 10 s.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// Serves until the process ends (on its own task).
    public static func start(
        listen: MetricsListen, core: FileSystemCore, registry: PrometheusCollectorRegistry, logger: Logger
    ) {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            _ = core.status()  // refreshes the gauges
            let text = registry.emitToBuffer()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
        router.get("/healthz") { _, _ -> Response in
            let failing = core.status().failing
            let text = failing.isEmpty ? "ok\n" : "failing: \(failing.joined(separator: ", "))\n"
            return Response(
                status: failing.isEmpty ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain"],
                body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("/status") { _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: statusJSON(core.status()))))
        }
        serve(router, on: listen, name: "status server", logger: logger)
        logger.info("status server", metadata: ["listen": "\(listen)"])
    }

    /// Runs `router` on `listen` on a task of its own (a unix socket left by an earlier process is replaced). A
    /// previous worker may still hold the address for a moment after a switch: binding is retried for 5 s.
    static func serve(_ router: Router<BasicRequestContext>, on listen: MetricsListen, name: String, logger: Logger) {
        let address: BindAddress
        switch listen {
        case .tcp(let host, let port): address = .hostname(host, port: port)
        case .unix(let path):
            unlink(path)
            address = .unixDomainSocket(path: path)
        }
        var quiet = logger
        quiet.logLevel = .warning
        let app = Application(router: router, configuration: .init(address: address), logger: quiet)
        Listener.start(name, logger: logger) { try await app.runService() }
    }

    static func statusJSON(_ status: CoreStatus) -> String {
        let quoted = JSONText.quoted
        let stores = status.stores.map { store in
            var fields = [
                "\"name\":\(quoted(store.name))", "\"ok\":\(store.health.ok)",
                "\"since\":\(store.health.since.seconds)",
            ]
            if let error = store.health.error { fields.append("\"error\":\(quoted(error))") }
            return "{" + fields.joined(separator: ",") + "}"
        }
        var fields = [
            "\"stores\":[\(stores.joined(separator: ","))]", "\"live_inodes\":\(status.liveInodes)",
            "\"cached_envs\":\(status.cachedEnvs)", "\"change_notices\":\(status.notices)",
            "\"worker_restarts\":\(status.workerRestarts)",
        ]
        if let last = status.lastNotice { fields.append("\"last_change_notice\":\(last.seconds)") }
        let leases = status.leases.map { lease in
            "{\"store\":\(quoted(lease.store)),\"role\":\(quoted(lease.role)),\"seconds_left\":\(lease.secondsLeft),\"renewable\":\(lease.renewable)}"
        }
        fields.append("\"leases\":[\(leases.joined(separator: ","))]")
        return "{" + fields.joined(separator: ",") + "}\n"
    }
}
