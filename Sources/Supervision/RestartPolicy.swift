import SecretsCore

/// When the supervisor starts the next worker, and what a worker's death means. Pure: no clock, no process.
public struct RestartPolicy: Sendable, Equatable {
    /// A worker that served this long before dying is not counted as crashing in a loop (one that dies at start,
    /// or on the first request it is given again and again, is).
    public static let healthyAfter = 2.0
    public static let firstPause = 0.25
    public static let longestPause = 10.0

    /// Workers that died young in a row.
    public private(set) var failures = 0

    public init() {}

    /// The pause before the next worker after one died: none after a worker that served a healthy while (or the
    /// first death), then 0.25 s doubling per young death up to 10 s.
    public mutating func pauseAfterDeath(served: Bool, lived: Double) -> Double {
        failures = served && lived >= Self.healthyAfter ? 1 : failures + 1
        return failures <= 1 ? 0 : min(Self.firstPause * Double(1 << min(failures - 2, 6)), Self.longestPause)
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
