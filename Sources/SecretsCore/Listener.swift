import Logging

/// The worker's network listeners (status, Dapr HTTP and gRPC).
public enum Listener {
    /// Runs `serve` on a task of its own. A previous worker may still hold the address for a moment after a switch,
    /// so a failure to start is retried every 100 ms for 5 s, then logged. `serve` starts a new server each time.
    public static func start(_ name: String, logger: Logger, _ serve: @escaping @Sendable () async throws -> Void) {
        Task {
            for attempt in 0..<50 {
                do {
                    try await serve()
                    return
                } catch {
                    if attempt == 49 {
                        logger.error("the \(name) could not start", metadata: ["error": "\(error)"])
                        return
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
        }
    }
}
