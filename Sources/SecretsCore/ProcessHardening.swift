import CLinux
import Glibc

/// What a process holding secrets does to itself first.
public enum ProcessHardening {
    /// Runs `body` with every descriptor above stderr that is not close-on-exec made so, then restores them: what
    /// `body` starts inherits none of them. For fusermount3, which outlives a supervisor that hands its mount over:
    /// a parent's descriptor it held on to would keep whoever watches that descriptor for EOF (a parent's process
    /// monitor) waiting after the supervisor is gone. A re-exec still inherits them, as before.
    public static func withoutInheritance<T>(_ body: () -> T) -> T {
        guard let directory = opendir("/proc/self/fd") else { return body() }
        var descriptors: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if let fd = Int32(name), fd > 2, fcntl(fd, F_GETFD) == 0 { descriptors.append(fd) }
        }
        closedir(directory)
        for fd in descriptors { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        defer { for fd in descriptors { _ = fcntl(fd, F_SETFD, 0) } }
        return body()
    }

    /// Sets the core-file limit to zero (soft and hard), so a crash never writes decrypted values to disk. Core
    /// handlers that run as pipes (systemd-coredump, apport) honour the limit too. False if the kernel refused.
    @discardableResult
    public static func disableCoreDumps() -> Bool {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        return setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit) == 0
    }

    /// Not dumpable: no core file, and no other process of the same user can ptrace this one or read its memory,
    /// environment or maps through /proc (only root can). False if the kernel refused.
    @discardableResult
    public static func disableDumping() -> Bool {
        secretsfs_set_undumpable() == 0 && secretsfs_is_dumpable() == 0
    }

    /// Locks the process's memory (mlockall, current and future pages, on fault) so nothing derived from a value
    /// (buffers, decrypted files) reaches swap. Values themselves always live in locked pages of their own
    /// (`SecretArena`); when the kernel refuses mlockall (RLIMIT_MEMLOCK too low for a non-root daemon) the
    /// returned message says how to allow the whole process (LimitMEMLOCK= in the unit).
    public static func lockMemory() -> String? {
        if secretsfs_lock_all_memory() == 0 { return nil }
        let failure = errno
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit)
        let soft = limit.rlim_cur == rlim_t.max ? "unlimited" : "\(limit.rlim_cur / 1024) KiB"
        return "mlockall failed (\(FileIO.errnoText(failure)); RLIMIT_MEMLOCK is \(soft)): only the pages that hold "
            + "values are locked; allow more with LimitMEMLOCK=infinity in the unit or run as root"
    }
}
