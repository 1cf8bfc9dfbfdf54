import Dispatch
import Locking

/// Fresh keys reach their backend on every open, but concurrent opens share fetches.
///
/// A fresh key's value for an open that began at `openedAt` comes from a fetch that *started* after the open began
/// (concurrent opens share it; a fetch already under way when the open began is waited out, never used), or, with
/// `fresh_max_age`, from one that started at most that long ago. So a fresh read never returns a value older than
/// its open (or than the bound), and many readers cost one fetch per round, not one each. Opens and fetches are
/// ordered by tickets from one counter, not by clock readings (a coarse or fake clock can tie; tickets cannot).
public final class FreshFetcher: Sendable {
    /// One fetch: its ticket, when it started; completion is signalled through `done`.
    final class Flight: Sendable {
        let ticket: UInt64
        let startedAt: Double
        let done = DispatchGroup()

        init(ticket: UInt64, startedAt: Double) {
            self.ticket = ticket
            self.startedAt = startedAt
            done.enter()
        }
    }

    struct Fetches {
        var inFlight: Flight?
        var last: (ticket: UInt64, startedAt: Double, result: Result<SecretValue?, SecretsError>)?
    }

    struct State {
        var paths: [InodeTable.FilePath: Fetches] = [:]
        var ticket: UInt64 = 0
    }

    let state = Locked(State())
    let resolver: Resolver
    let health: StoreHealthBoard
    let clock: @Sendable () -> Double

    public init(resolver: Resolver, health: StoreHealthBoard, clock: @escaping @Sendable () -> Double) {
        self.resolver = resolver
        self.health = health
        self.clock = clock
    }

    public func value(_ path: InodeTable.FilePath) throws(SecretsError) -> SecretValue? {
        let maxAge = resolver.freshMaxAge(top: path.top)
        let openTicket = state.withLock { state -> UInt64 in
            state.ticket += 1
            return state.ticket
        }
        while true {
            enum Next {
                case use(Result<SecretValue?, SecretsError>)
                case wait(Flight)
                case fetch(Flight)
            }
            let next: Next = state.withLock { state in
                let entry = state.paths[path] ?? Fetches()
                if let last = entry.last,
                    last.ticket > openTicket || (maxAge > 0 && clock() - last.startedAt <= maxAge)
                {
                    return .use(last.result)
                }
                if let flight = entry.inFlight { return .wait(flight) }
                state.ticket += 1
                let flight = Flight(ticket: state.ticket, startedAt: clock())
                state.paths[path, default: Fetches()].inFlight = flight
                return .fetch(flight)
            }
            switch next {
            case .use(let result):
                return try result.get()
            case .wait(let flight):
                flight.done.wait()
            case .fetch(let flight):
                let result: Result<SecretValue?, SecretsError>
                do {
                    result = .success(
                        try health.call(path.top, within: resolver.operationTimeout(top: path.top)) { () throws(SecretsError) in
                            try resolver.resolve(top: path.top, env: path.env, key: path.key)
                        })
                } catch {
                    result = .failure(error)
                }
                state.withLock { state in
                    state.paths[path]?.inFlight = nil
                    state.paths[path]?.last = (flight.ticket, flight.startedAt, result)
                }
                flight.done.leave()
                return try result.get()
            }
        }
    }
}
