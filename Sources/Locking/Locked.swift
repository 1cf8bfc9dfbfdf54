import CSanitizer
import Synchronization

/// The project's lock: a `Synchronization.Mutex` that also tells ThreadSanitizer about the ordering it gives.
///
/// `Mutex` on Linux takes and drops its lock with atomics inlined into the caller, but when threads contend it waits
/// and wakes in `libswiftSynchronization.so`, which is not instrumented: ThreadSanitizer then sees two threads touch the
/// guarded value with no ordering between them and reports a race that cannot happen. `Locked` marks the lock's
/// acquire and release on a token of its own, so a TSan build sees exactly the ordering the lock gives (and reports
/// what happens outside it). In a build without `-sanitize=thread` the marks are a test of a null pointer.
public struct Locked<Value: ~Copyable>: ~Copyable {
    @usableFromInline let mutex: Mutex<Value>
    @usableFromInline let token: LockToken

    @inlinable
    public init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
        token = LockToken()
    }

    /// Runs `body` with the value while holding the lock.
    @inlinable
    public borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        let address = Unmanaged.passUnretained(token).toOpaque()
        return try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            sfs_tsan_acquire(address)
            defer { sfs_tsan_release(address) }
            return try body(&value)
        }
    }
}

extension Locked: @unchecked Sendable where Value: ~Copyable {}

/// The address ThreadSanitizer's acquire and release marks of one lock name (an object, so the address is stable and
/// distinct even for a lock over an empty value).
public final class LockToken: Sendable {
    @inlinable
    public init() {}
}

/// What a sanitizer build changes that tests must know about.
public enum Sanitizers {
    /// Whether this process runs with a sanitizer runtime (`-sanitize=thread` or `address`). Their interceptors
    /// turn `mlock` and `mlockall` into calls that succeed and lock nothing, so memory-locking checks cannot hold.
    public static var runtimeLinked: Bool { sfs_sanitizer_linked() != 0 }
}
