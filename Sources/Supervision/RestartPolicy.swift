import SecretsCore

/// When the supervisor starts the next worker, and what a worker's death means. Pure: no clock, no process.
public struct RestartPolicy: Sendable, Equatable {
    /// The first pause after a worker died before serving; it doubles per such death in a row, up to `longestPause`,
    /// so that the mount is never left unserved for longer than that while a worker can start.
    public static let firstPause = 0.1
    public static let longestPause = 1.0
    /// How often the supervisor tries again when no binary on disk speaks its handover protocol and no worker is
    /// left to keep serving.
    public static let incompatibleRetry = 10.0

    /// Workers that died before serving, in a row.
    public private(set) var failures = 0

    public init() {}

    /// The pause before the next worker after one died. A worker that reached `serving` is replaced at once, however
    /// short its life (a crash that comes back with the same request is the in-flight tracking's business, not a
    /// reason to leave every reader waiting); one that died before serving backs off 0.1 s doubling up to 1 s.
    public mutating func pauseAfterDeath(served: Bool) -> Double {
        guard !served else {
            failures = 0
            return 0
        }
        failures += 1
        return min(Self.firstPause * Double(1 << min(failures - 1, 10)), Self.longestPause)
    }

    /// What to do when a worker that had not taken over yet dies.
    public enum PendingOutcome: Sendable, Equatable {
        /// Nothing ever served (the first worker failed): unmount and exit with this status.
        case giveUp(exitStatus: Int32)
        /// A reload failed; the running worker keeps serving. `protocolRefused`: it refused the handover protocol.
        case keepServing(protocolRefused: Bool)
        /// No worker serves: start another (after the pause).
        case restart
    }

    public static func pendingDied(everServed: Bool, hasCurrent: Bool, exitCode: Int32?) -> PendingOutcome {
        if !everServed {
            // A config the first worker found invalid is the user's error (2); anything else a failure.
            let invalid = exitCode == ExitStatus.invalidConfig.rawValue
            return .giveUp(exitStatus: invalid ? ExitStatus.invalidConfig.rawValue : ExitStatus.failure.rawValue)
        }
        if hasCurrent { return .keepServing(protocolRefused: exitCode == ExitStatus.protocolMismatch.rawValue) }
        return .restart
    }
}
