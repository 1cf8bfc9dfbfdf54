import Glibc

/// Seconds and nanoseconds since the epoch.
public typealias WallTime = (seconds: Int, nanoseconds: Int)

/// The project's one source of time: a monotonic clock for deadlines and ages, the wall clock for what people read
/// (file times, audit lines, /status). Components take `monotonic` as a function so tests can drive it.
public enum CoreClock {
    /// Seconds on CLOCK_MONOTONIC: never jumps, only for differences.
    @Sendable public static func monotonic() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// CLOCK_REALTIME.
    @Sendable public static func wall() -> WallTime {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return (Int(now.tv_sec), Int(now.tv_nsec))
    }
}
