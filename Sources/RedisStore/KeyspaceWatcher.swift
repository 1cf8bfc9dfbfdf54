import Foundation
import Logging
import RedisClient
import SecretsCore
import Locking

/// Subscribes to keyspace notifications for the store's hashes and reports changes (debounced). Reconnects with
/// backoff after a disconnect, resubscribes, and reports a change then too (events may have been missed). Once the
/// first subscription is confirmed, the hashes the store read before it are compared (a change in between would
/// otherwise be missed until ttl).
final class KeyspaceWatcher: Sendable {
    private let running: Locked<Bool>
    private let done: Locked<Bool>

    /// Nil when the server says notifications are off: the store then relies on the cache ttl.
    init?(
        target: RedisTarget, prefixes: [String], store: String, logger: Logger,
        describe: @escaping @Sendable (String) -> StoreChange, onChange: @escaping @Sendable ([StoreChange]) -> Void,
        onFirstSubscribed: @escaping @Sendable () -> [String] = { [] }
    ) {
        let settings = (try? target.connectionSettings().0) ?? target.settings
        let db = settings.endpoint.database
        if let connection = try? RedisConnection(settings) {
            defer { connection.close() }
            if case .array(let parts?)? = try? connection.command("CONFIG", "GET", "notify-keyspace-events"),
                parts.count == 2, let flags = parts[1].text
            {
                let hasKeyspace = flags.contains("K")
                let hasHash = flags.contains("h") || flags.contains("A")
                if !(hasKeyspace && hasHash) {
                    logger.warning(
                        """
                        Redis keyspace notifications are off; cached keys refresh after ttl only. Enable them with \
                        CONFIG SET notify-keyspace-events Kh (or notify-keyspace-events "Kh" in redis.conf)
                        """,
                        metadata: ["store": "\(store)"])
                    return nil
                }
            }
        }
        let patterns = prefixes.map { "__keyspace@\(db)__:\($0)_*" }
        if let refusal = Self.subscriptionRefusal(settings: settings, patterns: patterns) {
            logger.warning(
                """
                Redis refused the keyspace subscription (\(refusal)); cached keys refresh after ttl only. Allow it \
                with ACL SETUSER \(settings.endpoint.username ?? "default") +psubscribe \
                \(patterns.map { "&\($0)" }.joined(separator: " "))
                """,
                metadata: ["store": "\(store)"])
            return nil
        }
        running = Locked(true)
        done = Locked(false)
        let thread = Thread { [self] in
            self.loop(
                target: target, patterns: patterns, store: store, logger: logger, describe: describe,
                onChange: onChange, onFirstSubscribed: onFirstSubscribed)
        }
        thread.name = "secretsfs-redis-keyspace"
        thread.start()
    }

    /// The server's error when it refuses PSUBSCRIBE (an ACL user without channel permissions, a proxy without
    /// pub/sub); nil when it subscribes, or when it cannot be asked now (the loop keeps trying then).
    static func subscriptionRefusal(settings: RedisSettings, patterns: [String]) -> String? {
        guard let connection = try? RedisConnection(settings) else { return nil }
        defer { connection.close() }
        guard (try? connection.sendCommand(["PSUBSCRIBE"] + patterns)) != nil,
            let reply = try? connection.readReply()
        else { return nil }
        if case .error(let text) = reply { return text }
        return nil
    }

    /// Sleeps up to `seconds`, waking early when the watcher is stopped.
    private func rest(_ seconds: Double) {
        let end = Date().addingTimeInterval(seconds)
        while running.withLock({ $0 }) && Date() < end { Thread.sleep(forTimeInterval: 0.05) }
    }

    /// Behind Sentinel the subscription follows the master: when it moves, the watcher connects to the new one,
    /// subscribes, and reports a change of everything (notices may have been lost during the switch).
    private func loop(
        target: RedisTarget, patterns: [String], store: String, logger: Logger,
        describe: @Sendable (String) -> StoreChange, onChange: @escaping @Sendable ([StoreChange]) -> Void,
        onFirstSubscribed: @Sendable () -> [String]
    ) {
        let channelPrefix = "__keyspace@\(target.settings.endpoint.database)__:"
        var backoff = 0.1
        var first = true
        // Once the first subscription is confirmed (every pattern), hashes read before it are checked.
        var checked = false
        while running.withLock({ $0 }) {
            let connection: RedisConnection
            let generation: Int
            do {
                let (settings, current) = try target.connectionSettings()
                generation = current
                connection = try RedisConnection(settings)
                try connection.sendCommand(["PSUBSCRIBE"] + patterns)
            } catch {
                logger.debug("keyspace subscription failed; retrying", metadata: ["store": "\(store)", "error": "\(error)"])
                _ = target.refreshIfDue(interval: 1)
                rest(backoff)
                backoff = min(backoff * 2, 2)
                continue
            }
            logger.debug("subscribed to keyspace notifications", metadata: ["store": "\(store)"])
            // Events may have been missed while disconnected.
            if !first { onChange([.all]) }
            first = false
            backoff = 0.1
            // Hashes changed since the last report; reported once the channel has been quiet for 10 ms.
            var pending: Set<String> = []
            var pendingSince = Date()
            var refused = false
            while running.withLock({ $0 }) {
                if target.generation != generation {
                    logger.info("the Redis master moved; subscribing there", metadata: ["store": "\(store)"])
                    break
                }
                let ready = connection.waitReadable(timeout: pending.isEmpty ? 0.25 : 0.01)
                if !ready {
                    if !pending.isEmpty {
                        onChange(pending.map(describe))
                        pending = []
                    }
                    if connection.broken { break }
                    continue
                }
                do {
                    let message = try connection.readReply()
                    if case .array(let parts?) = message, parts.first?.text == "pmessage", parts.count >= 3,
                        let channel = parts[2].text, channel.hasPrefix(channelPrefix)
                    {
                        if pending.isEmpty { pendingSince = Date() }
                        pending.insert(String(channel.dropFirst(channelPrefix.count)))
                        // A steady stream is reported at least every 50 ms.
                        if Date().timeIntervalSince(pendingSince) > 0.05 {
                            onChange(pending.map(describe))
                            pending = []
                        }
                    }
                    if !checked, case .array(let parts?) = message, parts.first?.text == "psubscribe", parts.count == 3,
                        case .integer(let count) = parts[2], count == patterns.count
                    {
                        checked = true
                        let changed = onFirstSubscribed()
                        if !changed.isEmpty { onChange(changed.map(describe)) }
                    }
                    if case .error(let text) = message {
                        // Refused after a reconnect (the user's ACL changed): say so, and ask again slowly.
                        logger.warning(
                            "Redis refused the keyspace subscription (\(text)); cached keys refresh after ttl only",
                            metadata: ["store": "\(store)"])
                        refused = true
                        break
                    }
                } catch {
                    logger.info("keyspace subscription lost; reconnecting", metadata: ["store": "\(store)"])
                    break
                }
            }
            connection.close()
            if !pending.isEmpty { onChange(pending.map(describe)) }
            if refused { rest(30) }
        }
        done.withLock { $0 = true }
    }

    func stop() {
        running.withLock { $0 = false }
        for _ in 0..<60 where !done.withLock({ $0 }) { usleep(10_000) }
    }
}
