import Glibc

/// What a process holding secrets does to itself first.
public enum ProcessHardening {
    /// Sets the core-file limit to zero (soft and hard), so a crash never writes decrypted values to disk. Core
    /// handlers that run as pipes (systemd-coredump, apport) honour the limit too. False if the kernel refused.
    @discardableResult
    public static func disableCoreDumps() -> Bool {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        return setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit) == 0
    }
}
