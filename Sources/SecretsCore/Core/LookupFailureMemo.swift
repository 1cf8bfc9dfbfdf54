import Locking

/// One read, one bound, also for a name the kernel already holds: when its entry has expired (fresh keys: at once),
/// the kernel revalidates it with a LOOKUP and, if that fails, drops the name and looks it up again with a second
/// LOOKUP, right after the first. Against a frozen store each would wait out the store's timeout: twice the bound.
/// The next lookup of a file whose lookup failed (not "not found") in the last `window` seconds is answered with
/// that failure at once, once: the kernel's second LOOKUP. Every lookup after it asks the backend again.
final class LookupFailureMemo: Sendable {
    let failures = Locked<[InodeTable.FilePath: (at: Double, error: SecretsError)]>([:])
    let window: Double

    init(window: Double = 0.05) {
        self.window = window
    }

    func answer<T>(_ path: InodeTable.FilePath, _ body: () throws(SecretsError) -> T) throws(SecretsError) -> T {
        let now = CoreClock.monotonic()
        let recent = failures.withLock { failures -> SecretsError? in
            guard let failure = failures.removeValue(forKey: path) else { return nil }
            return now - failure.at <= window ? failure.error : nil
        }
        if let recent { throw recent }
        do {
            return try body()
        } catch where error.code != .notFound && error.code != .permissionDenied {
            let at = CoreClock.monotonic()
            failures.withLock { failures in
                // Bounded: a burst of failing names never grows it past a few thousand entries.
                if failures.count > 4096 { failures = failures.filter { at - $0.value.at <= window } }
                failures[path] = (at, error)
            }
            throw error
        }
    }
}
