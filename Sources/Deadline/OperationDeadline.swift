import Glibc

/// The moment by which the operation in progress on this thread (or task) must be done, so that every backend wait
/// inside one read shares one bound: a store's `timeout` is a total, not a per-request allowance.
///
/// The outermost caller that knows the bound sets it (the core around a store call, a store around its public
/// methods); each socket or HTTP wait inside takes the earlier of its own timeout and what is left. Bound in
/// synchronous code too (FUSE threads are not tasks): a task-local falls back to thread-local storage there.
public enum OperationDeadline {
    @TaskLocal public static var current: Double?

    /// CLOCK_MONOTONIC in seconds, the clock deadlines are on.
    public static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// Runs `body` with a deadline `seconds` from now, or under the one in force when that is earlier. Nil: no new
    /// bound (the one in force, if any, still applies).
    public static func within<T, E: Error>(_ seconds: Double?, _ body: () throws(E) -> T) throws(E) -> T {
        guard let seconds else { return try body() }
        let deadline = min(now() + seconds, current ?? .infinity)
        let result: Result<T, E> = $current.withValue(deadline) {
            do throws(E) {
                return .success(try body())
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// When a wait of at most `seconds` from now must end, under the deadline in force.
    public static func limit(_ seconds: Double) -> Double {
        min(now() + seconds, current ?? .infinity)
    }

    /// The time left of a wait of at most `seconds` (0 when the deadline has passed).
    public static func remaining(_ seconds: Double) -> Double {
        max(0, limit(seconds) - now())
    }
}
