import Glibc

/// An error of secretsfs: a code, a message that never contains a secret value, and an optional cause.
public struct SecretsError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case notFound = "not found"
        case storeUnavailable = "store unavailable"
        case decryptionFailed = "decryption failed"
        case permissionDenied = "permission denied"
        case insecureFile = "insecure file"
        case timeout = "timed out"
        case readOnly = "read-only"
        case invalidConfig = "invalid config"
        case invalidData = "invalid data"
        case invalidArgument = "invalid argument"
        case io = "I/O error"
        case unsupported = "unsupported"
        /// A node issued before a worker switch whose value has changed since: the open that holds it must fail
        /// rather than read another value.
        case stale = "stale"
    }

    public var code: Code
    public var message: String
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        if let cause {
            return "\(message): \(cause)"
        }
        return message
    }

    /// The one place where errors become errno values.
    public var errno: Int32 {
        switch code {
        case .notFound: return ENOENT
        case .permissionDenied: return EACCES
        case .readOnly: return EROFS
        case .invalidArgument: return EINVAL
        case .unsupported: return ENOSYS
        case .stale: return ESTALE
        // A backend that is slow, down or broken is an I/O error to the reader (what `cat` and friends expect);
        // the log says which.
        case .timeout, .storeUnavailable, .decryptionFailed, .insecureFile, .invalidConfig, .invalidData, .io:
            return EIO
        }
    }

    /// Maps any error to errno: secretsfs errors by their code, anything else to EIO.
    public static func errno(for error: any Error) -> Int32 {
        (error as? SecretsError)?.errno ?? EIO
    }
}

/// Process exit codes of the `secretsfs` command, in one place.
public enum ExitStatus: Int32, Sendable {
    case success = 0
    /// A runtime failure: a store failed, the mount failed.
    case failure = 1
    /// Bad usage or a malformed config file; nothing was mounted.
    case invalidConfig = 2
    /// The requested store, env or key does not exist.
    case notFound = 3
    /// Usage error as ArgumentParser reports it (an unknown command or option).
    case usage = 64
    /// `worker`: its FUSE connection ended (unmounted from outside, or aborted): no next worker could serve it
    /// (EX_UNAVAILABLE). Between a worker and its supervisor only.
    case connectionEnded = 69
    /// `worker`: the supervisor speaks a handover protocol this binary does not (EX_PROTOCOL).
    case protocolMismatch = 76
    /// `run`: the command exists but cannot be executed (as shells do).
    case commandNotExecutable = 126
    /// `run`: the command was not found (as shells do).
    case commandNotFound = 127
}
