import Dispatch
import Deadline
import Logging
import Metrics
import Locking

/// Whether a top's last backend call was answered, since when (wall clock), and what failed.
public struct StoreHealth: Sendable {
    public var ok: Bool
    public var since: WallTime
    public var error: String?
}

/// Every backend call of the readers goes through here: timed, its errors counted, and whether the store answered
/// (not found is an answer) kept per top for /status and /healthz. Also rate-limits the warnings readers log.
/// Metric labels are top names and kinds from the config, never anything from a value.
public final class StoreHealthBoard: Sendable {
    struct State {
        var health: [String: StoreHealth] = [:]
        var lastWarning: [String: Double] = [:]
        /// Store/env pairs already warned about for names that cannot be entries (one warning each).
        var warnedNames: Set<String> = []
        /// Background refreshes running now (one per view or listing).
        var refreshing: Set<String> = []
    }

    let state = Locked(State())
    let clock: @Sendable () -> Double
    let logger: Logger

    public init(clock: @escaping @Sendable () -> Double, logger: Logger) {
        self.clock = clock
        self.logger = logger
    }

    /// Runs one backend call for `top`, all of it within `within` seconds when given (every request behind it shares
    /// that deadline: a read waits on a dead backend for its store's `timeout`, not once per request).
    public func call<T>(_ top: String, within: Double? = nil, _ body: () throws(SecretsError) -> T) throws(SecretsError) -> T {
        let started = CoreClock.monotonic()
        let result: Result<T, SecretsError>
        do {
            result = .success(try OperationDeadline.within(within, body))
        } catch {
            result = .failure(error)
        }
        Timer(label: "secretsfs_backend_seconds", dimensions: [("top", top)])
            .recordNanoseconds(Int64((CoreClock.monotonic() - started) * 1e9))
        var failure: SecretsError?
        if case .failure(let error) = result, error.code != .notFound { failure = error }
        if failure != nil { Counter(label: "secretsfs_backend_errors_total", dimensions: [("top", top)]).increment() }
        let now = CoreClock.wall()
        state.withLock { state in
            let ok = failure == nil
            if state.health[top]?.ok != ok {
                state.health[top] = StoreHealth(ok: ok, since: now, error: failure.map { "\($0)" })
            } else if let failure {
                state.health[top]?.error = "\(failure)"
            }
        }
        return try result.get()
    }

    public var snapshot: [String: StoreHealth] { state.withLock { $0.health } }

    /// Whether the last backend call for `top` failed (not found is an answer): readers then take what is cached
    /// at once, within `stale_if_error`, instead of each waiting out the store's timeout first.
    public func isFailing(_ top: String) -> Bool { state.withLock { $0.health[top]?.ok == false } }

    /// Runs `body` on a background thread unless the one started for `key` is still running: a store that fails
    /// is asked again by one refresh at a time, while readers are served what is cached.
    public func refreshInBackground(_ key: String, _ body: @escaping @Sendable () -> Void) {
        guard state.withLock({ $0.refreshing.insert(key).inserted }) else { return }
        DispatchQueue.global().async { [self] in
            body()
            _ = state.withLock { $0.refreshing.remove(key) }
        }
    }

    /// Background refreshes running now (tests wait on this).
    public var refreshesRunning: Int { state.withLock { $0.refreshing.count } }

    /// At most one warning a minute per top and kind (failures; stale values served), so a failing fresh key read
    /// in a loop does not flood the log, and stale serving is said even while reads fail.
    public func warn(top: String, kind: String = "failure", _ message: String) {
        let now = clock()
        let slot = top + "\u{0}" + kind
        let due = state.withLock { state -> Bool in
            if let last = state.lastWarning[slot], now - last < 60 { return false }
            state.lastWarning[slot] = now
            return true
        }
        if due { logger.warning("\(message)", metadata: ["store": "\(top)"]) }
    }

    /// Leaves out the names that cannot be entries, with one warning per store and env (lengths and positions only).
    public func usableNames(_ names: [String], top: String, env: String?) -> [String] {
        var problems: [String] = []
        let usable = names.filter { name in
            guard let problem = EntryName.problem(name) else { return true }
            problems.append(problem)
            return false
        }
        guard !problems.isEmpty else { return usable }
        let place = env.map { "\(top)/\($0)" } ?? top
        if state.withLock({ $0.warnedNames.insert(place).inserted }) {
            logger.warning(
                "left out names that cannot be files or folders: \(problems.joined(separator: "; "))",
                metadata: ["store": "\(top)", "env": "\(env ?? "(env names)")", "count": "\(problems.count)"])
        }
        return usable
    }
}
