import Deadline
import Glibc
import Locking

/// A small pool: parallel readers each get their own connection instead of queueing behind one socket. A
/// connection that failed is dropped; a command that fails on a reused connection (for example after a server
/// restart) is retried once on a new one. Behind Sentinel, a connection failure also asks the sentinels where the
/// master is now (at most every 200 ms), and the command is retried once there if it moved; connections to a
/// former master are never reused.
public final class RedisPool: Sendable {
    public let target: RedisTarget
    private let idle: Locked<[UnsafeTransfer]>
    private let maxIdle: Int

    /// Moves a connection between threads; only one user holds it at a time.
    struct UnsafeTransfer: @unchecked Sendable {
        let connection: RedisConnection
        let generation: Int
    }

    public convenience init(settings: RedisSettings, maxIdle: Int = 8) {
        self.init(target: RedisTarget(fixed: settings), maxIdle: maxIdle)
    }

    public init(target: RedisTarget, maxIdle: Int = 8) {
        self.target = target
        self.idle = Locked([])
        self.maxIdle = maxIdle
    }

    /// The settings of new connections now (the current master behind Sentinel).
    public var settings: RedisSettings { target.settings }

    /// `replicaFallback`: a read (nothing it runs writes) that may go to a replica the sentinels list when the
    /// master cannot be reached (a failover in progress); `onReplica` hears which replica answered.
    public func withConnection<T>(
        replicaFallback: Bool, onReplica: (String) -> Void = { _ in }, _ body: (RedisConnection) throws(RedisError) -> T
    ) throws(RedisError) -> T {
        do {
            return try withConnection(body)
        } catch where replicaFallback && target.sentinel != nil && (error.kind == .connection || error.kind == .timeout) {
            // A failover in progress: until the operation's bound, ask the replicas (the ones the sentinels list as
            // healthy now, else the ones they listed last), then the sentinels for a new master, then the master.
            // Rounds, not one pass: while the sentinels promote a replica, it drops its clients (CLIENT KILL) and is
            // briefly listed as disconnected, and nothing is the master yet.
            let end = OperationDeadline.limit(target.template.timeout)
            while true {
                // Twice over the list: the replica being promoted drops its clients once.
                let replicas = target.replicaSettings()
                for settings in replicas + replicas {
                    guard let connection = try? RedisConnection(settings) else { continue }
                    defer { connection.close() }
                    guard let result = try? body(connection) else { continue }
                    // A node listed last as a replica may be the master by now: then it is no replica read.
                    if settings.endpoint != target.settings.endpoint { onReplica("\(settings.endpoint)") }
                    return result
                }
                // At the moment of promotion the replica is the master already (and the old master is listed as a
                // replica that is down). Ask the sentinels now, not at the rate-limited pace.
                _ = try? target.refresh()
                if let result = try? once(body) { return result }
                let left = end - OperationDeadline.now()
                guard left > 0.01 else { throw error }
                usleep(useconds_t(min(left, 0.05) * 1_000_000))
            }
        }
    }

    public func withConnection<T>(_ body: (RedisConnection) throws(RedisError) -> T) throws(RedisError) -> T {
        let (settings, generation) = try target.connectionSettings()
        var taken: UnsafeTransfer?
        while let next = idle.withLock({ $0.popLast() }) {
            if next.generation == generation {
                taken = next
                break
            }
            next.connection.close()
        }
        let reused = taken != nil
        var connection: RedisConnection
        do throws(RedisError) {
            if let taken { connection = taken.connection } else { connection = try RedisConnection(settings) }
        } catch {
            // Nothing answers where the master was: ask the sentinels, and try once where they point now.
            guard target.sentinel != nil, target.refreshIfDue() else { throw error }
            return try once(body)
        }
        do {
            let result = try body(connection)
            giveBack(connection, generation: generation)
            return result
        } catch where error.kind == .connection {
            connection.close()
            if target.sentinel != nil, target.refreshIfDue() { return try once(body) }
            guard reused else { throw error }
            return try once(body)
        } catch {
            connection.close()
            throw error
        }
    }

    /// One try on a new connection to the current target.
    private func once<T>(_ body: (RedisConnection) throws(RedisError) -> T) throws(RedisError) -> T {
        let (settings, generation) = try target.connectionSettings()
        let connection = try RedisConnection(settings)
        do {
            let result = try body(connection)
            giveBack(connection, generation: generation)
            return result
        } catch {
            connection.close()
            throw error
        }
    }

    private func giveBack(_ connection: RedisConnection, generation: Int) {
        guard !connection.broken, generation == target.generation else {
            connection.close()
            return
        }
        let kept = idle.withLock { list -> Bool in
            guard list.count < maxIdle else { return false }
            list.append(UnsafeTransfer(connection: connection, generation: generation))
            return true
        }
        if !kept { connection.close() }
    }

    /// Closes the idle connections (after the master moved, say).
    public func drain() {
        let all = idle.withLock { list -> [UnsafeTransfer] in
            defer { list.removeAll() }
            return list
        }
        all.forEach { $0.connection.close() }
    }

    public func close() {
        target.stop()
        drain()
    }
}
