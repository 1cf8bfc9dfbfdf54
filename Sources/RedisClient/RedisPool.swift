import Synchronization

/// A small pool: parallel readers each get their own connection instead of queueing behind one socket. A
/// connection that failed is dropped; a command that fails on a reused connection (for example after a server
/// restart) is retried once on a new one.
public final class RedisPool: Sendable {
    public let settings: RedisSettings
    private let idle: Mutex<[UnsafeTransfer]>
    private let maxIdle: Int

    /// Moves a connection between threads; only one user holds it at a time.
    struct UnsafeTransfer: @unchecked Sendable {
        let connection: RedisConnection
    }

    public init(settings: RedisSettings, maxIdle: Int = 8) {
        self.settings = settings
        self.idle = Mutex([])
        self.maxIdle = maxIdle
    }

    public func withConnection<T>(_ body: (RedisConnection) throws(RedisError) -> T) throws(RedisError) -> T {
        var reused = true
        var connection: RedisConnection
        if let taken = idle.withLock({ $0.popLast() }) {
            connection = taken.connection
        } else {
            connection = try RedisConnection(settings)
            reused = false
        }
        do {
            let result = try body(connection)
            giveBack(connection)
            return result
        } catch where reused && error.kind == .connection {
            connection.close()
            connection = try RedisConnection(settings)
            let result = try body(connection)
            giveBack(connection)
            return result
        } catch {
            connection.close()
            throw error
        }
    }

    private func giveBack(_ connection: RedisConnection) {
        guard !connection.broken else { return }
        let kept = idle.withLock { list -> Bool in
            guard list.count < maxIdle else { return false }
            list.append(UnsafeTransfer(connection: connection))
            return true
        }
        if !kept { connection.close() }
    }

    public func close() {
        let all = idle.withLock { list -> [UnsafeTransfer] in
            defer { list.removeAll() }
            return list
        }
        all.forEach { $0.connection.close() }
    }
}
