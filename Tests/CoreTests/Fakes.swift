import Logging
import SecretsCore
import StoreConformance
import Locking
import Testing

/// An in-memory store that counts backend calls, can be told to fail, and pushes its own changes while watched.
final class FakeStore: SecretStore {
    let name: String
    let data: Locked<[String: [String: [String: SecretValue]]]>  // location ("" = default) -> env -> fields
    let calls = Locked(0)
    let failing = Locked(false)
    let watcher = Locked<(@Sendable ([StoreChange]) -> Void)?>(nil)

    init(name: String, envs: [String: [String: SecretValue]], locations: [String: [String: [String: SecretValue]]] = [:]) {
        self.name = name
        var all = locations
        all[""] = envs
        self.data = Locked(all)
    }

    func set(_ env: String, _ key: String, _ value: SecretValue?, at location: String = "") {
        data.withLock { $0[location, default: [:]][env, default: [:]][key] = value }
        watcher.withLock { $0 }?([.at(location: location.isEmpty ? nil : location, env: env)])
    }

    func watch(locations: [String], _ onChange: @escaping @Sendable ([StoreChange]) -> Void) -> Bool {
        watcher.withLock { $0 = onChange }
        return true
    }

    func close() { watcher.withLock { $0 = nil } }

    private func snapshot(_ location: String?) throws(SecretsError) -> [String: [String: SecretValue]] {
        calls.withLock { $0 += 1 }
        if failing.withLock({ $0 }) { throw SecretsError(.storeUnavailable, "fake store '\(name)' is down") }
        return data.withLock { $0[location ?? ""] ?? [:] }
    }

    func envs(at location: String?) throws(SecretsError) -> [String] { try snapshot(location).keys.sorted() }

    func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        try snapshot(location)[env]
    }
}

final class RecordingNotifier: KernelNotifier {
    let invalidated = Locked<[(UInt64, String)]>([])
    let announced = Locked<[[String]]>([])
    let swapped = Locked<[[String]]>([])
    func invalidateEntry(parent: UInt64, name: String) { invalidated.withLock { $0.append((parent, name)) } }
    func announce(_ paths: [String], swapping directories: [String]) {
        announced.withLock { $0.append(paths) }
        if !directories.isEmpty { swapped.withLock { $0.append(directories) } }
    }
}

final class FakeClock: Sendable {
    let now = Locked(1000.0)
    func advance(_ seconds: Double) { now.withLock { $0 += seconds } }
    var function: @Sendable () -> Double { { [self] in self.now.withLock { $0 } } }
}

func makeConfig(_ extra: String = "", ttl: String = "60s", fresh: String = "[\"FRESH_*\"]", stale: String = "30s") throws
    -> Config
{
    try Config.parse(
        text: """
            [mount]
            path = "/tmp/unused"
            uid = 7
            gid = 8
            [cache]
            ttl = "\(ttl)"
            fresh = \(fresh)
            stale_if_error = "\(stale)"
            [stores.fake]
            type = "fake"
            \(extra)
            """, file: "test.toml")
}

@Suite("fake store")
struct FakeStoreConformanceTests {
    @Test("the in-memory fake passes the store conformance suite, watch and close included")
    func conformance() throws {
        let store = FakeStore(name: "fake", envs: StoreConformance.seed)
        try StoreConformance(store: store) { env, key, value in store.set(env, key, value) }.checkConformance()
    }
}
