import Glibc
import Synchronization

/// The bytes of one secret value.
///
/// It never prints its content (`description` is `<redacted>`), and its memory is overwritten with zeros when the
/// last reference goes away. Copies made by callers through `withUnsafeBytes` are their own responsibility.
public final class SecretBytes: Sendable, CustomStringConvertible, CustomDebugStringConvertible, Equatable {
    // Owned exclusively by this immutable object; written only in init and deinit.
    private nonisolated(unsafe) let allocation: UnsafeMutableRawPointer
    public let count: Int
    /// Set when the process could not lock all its memory: each value then locks its own pages (best effort).
    public static let lockEach = Atomic<Bool>(false)
    private let locked: Bool

    public init<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let count = bytes.count
        let allocation = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 1)
        locked = Self.lockEach.load(ordering: .relaxed) && mlock(allocation, max(count, 1)) == 0
        UnsafeMutableRawBufferPointer(start: allocation, count: count).copyBytes(from: bytes)
        self.allocation = allocation
        self.count = count
    }

    public convenience init(string: String) {
        self.init(Array(string.utf8))
    }

    deinit {
        // explicit_bzero is not elided by the optimiser, unlike a plain memset before free.
        explicit_bzero(allocation, max(count, 1))
        if locked { munlock(allocation, max(count, 1)) }
        allocation.deallocate()
    }

    private var storage: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: allocation, count: count) }

    public var isEmpty: Bool { count == 0 }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(storage)
    }

    /// A copy as a plain array, for code that must hand the bytes on (a reply buffer, an encryptor).
    public func copyBytes() -> [UInt8] { Array(storage) }

    /// The bytes as UTF-8 text, or nil when they are not valid UTF-8.
    public func utf8String() -> String? {
        String(validating: storage, as: UTF8.self)
    }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "SecretBytes(<redacted>, \(count) bytes)" }

    /// Length-independent-time comparison of the content.
    public static func == (lhs: SecretBytes, rhs: SecretBytes) -> Bool {
        if lhs === rhs { return true }
        guard lhs.count == rhs.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<lhs.count {
            diff |= lhs.storage[i] ^ rhs.storage[i]
        }
        return diff == 0
    }
}

/// Overwrites a plain byte array that held secret material (a buffer, a decrypted file) with zeros.
public func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { buffer in
        if let base = buffer.baseAddress { explicit_bzero(base, buffer.count) }
    }
}
