import Foundation
import Locking

/// Reads files of a mount in a loop on its own thread (each read bounded by the mount's read timeout) and records
/// every outcome with its time, for tests that change a backend under readers.
public final class LoopReader: @unchecked Sendable {
    public struct Outcome: Sendable {
        public var path: String
        public var at: Date
        /// The text read, or nil when the read failed.
        public var text: String?
        public var errno: Int32?
    }

    let outcomes = Locked<[Outcome]>([])
    let running = Locked(true)
    let done = DispatchSemaphore(value: 0)

    public init(_ fs: MountedSecretsFS, paths: [String], pause: Double = 0.02) {
        let thread = Thread { [self] in
            while running.withLock({ $0 }) {
                for path in paths {
                    var outcome = Outcome(path: path, at: Date(), text: nil, errno: nil)
                    do {
                        outcome.text = try fs.readText(path, timeout: 15)
                    } catch let error as FSError {
                        outcome.errno = error.code
                    } catch {
                        outcome.errno = -1
                    }
                    outcome.at = Date()
                    outcomes.withLock { $0.append(outcome) }
                }
                usleep(useconds_t(pause * 1_000_000))
            }
            done.signal()
        }
        thread.start()
    }

    /// Stops the loop (waits for the read in progress) and returns every outcome.
    @discardableResult
    public func stop() -> [Outcome] {
        let wasRunning = running.withLock { running in
            defer { running = false }
            return running
        }
        if wasRunning { _ = done.wait(timeout: .now() + 30) }
        return results
    }

    public var results: [Outcome] { outcomes.withLock { $0 } }

    /// Waits until the loop has made `count` more successful reads (of any of its paths), failing after `seconds`.
    public func waitForReads(_ count: Int = 5, seconds: Double = 30) throws {
        let base = outcomes.withLock { $0.count { $0.text != nil } }
        try waitUntil("\(count) more good reads", seconds: seconds, every: 0.005) {
            outcomes.withLock { $0.count { $0.text != nil } } >= base + count
        }
    }

    /// Waits until `path` reads `text` (a read after `since`), up to `seconds`; returns when it was first read.
    public func waitFor(_ path: String, text: String, since: Date = .distantPast, seconds: Double) -> Date? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let hit = results.first(where: { $0.path == path && $0.text == text && $0.at >= since }) { return hit.at }
            usleep(20_000)
        }
        return nil
    }
}
