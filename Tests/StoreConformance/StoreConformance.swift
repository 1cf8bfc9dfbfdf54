import Dispatch
import Foundation
import Glibc
import SecretsCore
import Locking
import Testing

/// What every store must do, whatever its backend: reads, layers, outside changes, change notices (`watch`) and
/// `close`. A library so that every store's tests run it, the in-memory fake included. A backend's tests call
/// `checkConformance` with the store built over `seed` and a way to change that data afterwards.
public struct StoreConformance {
    /// Seed data: env -> key -> value. Must contain what `checkConformance` reads.
    public static let seed: [String: [String: SecretValue]] = [
        "default": ["PORT": .int(1234), "SHARED": .string("default")],
        "production": [
            "PASSWORD": .string("0x1F"), "RATIO": .float(1.5), "ENABLED": .bool(true),
            "TABLE": .table(["b": .int(2), "a": .string("x")]), "UNICODE_ü": .string("päss ✓"), "EMPTY": .string(""),
        ],
    ]

    public let store: any SecretStore
    /// A store whose backend holds strings only (environment variables): values are compared by the bytes a file
    /// would serve, which is what readers see.
    var stringsOnly = false
    /// Replaces one key's value in the backend, as an outside writer would.
    let update: (String, String, SecretValue) throws -> Void
    /// Opens another store over the same backend. For a store whose notices arrive asynchronously: after `close`,
    /// the witness hearing of a change is the event that says the closed store would have heard of it too.
    let witness: (() throws -> any SecretStore)?

    public init(
        store: any SecretStore, stringsOnly: Bool = false, witness: (() throws -> any SecretStore)? = nil,
        update: @escaping (String, String, SecretValue) throws -> Void
    ) {
        self.store = store
        self.stringsOnly = stringsOnly
        self.witness = witness
        self.update = update
    }

    /// Changes one key in the backend as an outside writer would (for a store's own extra checks).
    public func change(_ env: String, _ key: String, _ value: SecretValue) throws { try update(env, key, value) }

    func same(_ actual: SecretValue?, _ expected: SecretValue) -> Bool {
        guard let actual else { return false }
        return stringsOnly ? actual.fileBytes() == expected.fileBytes() : actual == expected
    }

    /// Every check, ending with `close`: the store is closed afterwards.
    public func checkConformance() throws {
        try checkReads()
        try checkChangeBeforeWatch()
        try checkWatchAndClose()
    }

    /// A worker reads before it starts watching: a store that pushes changes reports an env changed after it was
    /// read but before `watch` was called (on a new store over the same backend, the witness), instead of missing
    /// it until ttl.
    func checkChangeBeforeWatch() throws {
        guard let witness else { return }
        let other = try witness()
        defer { other.close() }
        #expect(try other.fields(of: "production", at: nil) != nil)
        try update("production", "PASSWORD", .string("changed-before-watch"))
        let notices = Locked<[StoreChange]>([])
        let arrived = DispatchSemaphore(value: 0)
        let pushes = other.watch(locations: []) { changes in
            notices.withLock { $0 += changes }
            arrived.signal()
        }
        guard pushes else { return }
        #expect(arrived.wait(timeout: .now() + 10) == .success, "a change made before watch started was not reported")
        let reported = notices.withLock { $0 }
        #expect(Self.namesProduction(reported), "the notice names the env or everything: \(reported)")
    }

    /// Whether some change names `production` at the store's own location, or everything.
    static func namesProduction(_ changes: [StoreChange]) -> Bool {
        changes.contains { change in
            switch change {
            case .all: return true
            case .at(let location, let env): return location == nil && (env == nil || env == "production")
            }
        }
    }

    func checkReads() throws {
        #expect(try Set(store.envs(at: nil)).isSuperset(of: ["default", "production"]))
        let production = try #require(try store.fields(of: "production", at: nil))
        #expect(same(production["PASSWORD"], .string("0x1F")))
        #expect(same(production["RATIO"], .float(1.5)))
        #expect(same(production["ENABLED"], .bool(true)))
        #expect(same(production["TABLE"], .table(["b": .int(2), "a": .string("x")])))
        #expect(same(production["UNICODE_ü"], .string("päss ✓")))
        #expect(same(production["EMPTY"], .string("")))
        #expect(try store.fields(of: "nosuchenv", at: nil) == nil)

        // value(of:layers:) walks layers in order and matches case-insensitively after an exact miss.
        #expect(same(try store.value(of: "PORT", layers: ["production", "default"], at: nil), .int(1234)))
        #expect(same(try store.value(of: "password", layers: ["production"], at: nil), .string("0x1F")))
        #expect(try store.value(of: "MISSING", layers: ["production", "default"], at: nil) == nil)

        // A change by an outside writer shows on the next fetch.
        try update("production", "PASSWORD", .string("rotated"))
        #expect(same(try store.value(of: "PASSWORD", layers: ["production"], at: nil), .string("rotated")))
    }

    /// A store that says it pushes changes (`watch` returns true) reports an outside change of an env, naming it or
    /// everything; `close` returns promptly, may be called twice, and no notice arrives after it returned.
    func checkWatchAndClose() throws {
        let notices = Locked<[[StoreChange]]>([])
        let arrived = DispatchSemaphore(value: 0)
        let closed = Locked(false)
        let late = Locked(0)
        let pushes = store.watch(locations: []) { changes in
            if closed.withLock({ $0 }) { late.withLock { $0 += 1 } }
            notices.withLock { $0.append(changes) }
            arrived.signal()
        }
        if pushes {
            // A polling store may take its first look after the first write: write until a notice comes.
            var noticed = false
            for round in 0..<30 where !noticed {
                try update("production", "PASSWORD", .string("watched-\(round)"))
                noticed = arrived.wait(timeout: .now() + 1) == .success
            }
            #expect(noticed, "a store that pushes changes reported none")
            let reported = notices.withLock { $0 }.flatMap { $0 }
            #expect(Self.namesProduction(reported), "the notice names the env or everything: \(reported)")
        }
        let done = DispatchSemaphore(value: 0)
        let store = self.store
        Thread {
            store.close()
            store.close()
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 15) == .success, "close did not return")
        closed.withLock { $0 = true }
        if pushes {
            // After close, changes reach no one. A store with asynchronous notices: a witness over the same backend
            // hears of the change, and by then the closed store would have.
            let before = late.withLock { $0 }
            if let witness {
                let other = try witness()
                defer { other.close() }
                let heard = DispatchSemaphore(value: 0)
                #expect(other.watch(locations: []) { _ in heard.signal() }, "the witness store does not push")
                var noticed = false
                for round in 0..<30 where !noticed {
                    try update("production", "PASSWORD", .string("after-close-\(round)"))
                    noticed = heard.wait(timeout: .now() + 1) == .success
                }
                #expect(noticed, "the witness heard of no change")
            } else {
                try update("production", "PASSWORD", .string("after-close"))
            }
            #expect(late.withLock { $0 } == before, "a notice arrived after close returned")
        }
    }
}

/// A backend outage as every networked store must take it, with `timeout = "1s"`: paused (SIGSTOP), a read fails
/// after about the timeout with EIO and reads again once resumed; stopped, a read fails at once with EIO and reads
/// again once the server is back and `rewrite` has put "after" in. Returns the hung read's error for more checks.
@discardableResult
public func checkOutages(
    read: () throws -> SecretValue?, pause: () -> Void, resume: () -> Void, stop: () -> Void,
    restart: () throws -> Void, rewrite: () throws -> Void
) throws -> SecretsError? {
    #expect(try read() == .string("before"))
    pause()
    var started = Date()
    let hung = #expect(throws: SecretsError.self) { try read() }
    let waited = Date().timeIntervalSince(started)
    #expect(waited >= 0.9 && waited < 4, "waited \(waited) s")
    #expect(hung.map { SecretsError.errno(for: $0) } == EIO)
    resume()
    #expect(try read() == .string("before"))

    stop()
    started = Date()
    let down = #expect(throws: SecretsError.self) { try read() }
    #expect(Date().timeIntervalSince(started) < 4)
    #expect(down.map { SecretsError.errno(for: $0) } == EIO)
    try restart()
    try rewrite()
    #expect(try read() == .string("after"))
    return hung
}
