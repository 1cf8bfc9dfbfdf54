import Glibc

/// Starting a child process: posix_spawn (or posix_spawnp, searching PATH) with every signal unblocked and the ones
/// the parent handles back at their default actions, so the child starts as if from a shell.
public enum ChildProcess {
    /// `environment`: a NULL-terminated block (nil: this process's own). `actions`: file actions, or nil.
    public static func spawn(
        _ file: String, _ argv: [String], environment: [UnsafeMutablePointer<CChar>?]? = nil, searchPath: Bool = false,
        actions: UnsafePointer<posix_spawn_file_actions_t>? = nil, defaultSignals: [Int32]
    ) throws(SecretsError) -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in defaultSignals { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let cArgv = argv.map { strdup($0) } + [nil]
        defer { cArgv.forEach { free($0) } }
        var pid: pid_t = 0
        let result: Int32
        if let environment {
            result = searchPath
                ? posix_spawnp(&pid, file, actions, &attributes, cArgv, environment)
                : posix_spawn(&pid, file, actions, &attributes, cArgv, environment)
        } else {
            result = searchPath
                ? posix_spawnp(&pid, file, actions, &attributes, cArgv, environ)
                : posix_spawn(&pid, file, actions, &attributes, cArgv, environ)
        }
        guard result == 0 else {
            throw SecretsError(result == ENOENT ? .notFound : .io, "cannot start \(file): \(FileIO.errnoText(result))")
        }
        return pid
    }
}
