import Glibc

/// The bytes of one secret value.
///
/// It never prints its content (`description` is `<redacted>`), and its memory is overwritten with zeros when the
/// last reference goes away. Copies made by callers through `withUnsafeBytes` are their own responsibility.
public final class SecretBytes: Sendable, CustomStringConvertible, CustomDebugStringConvertible, Equatable {
    // Owned exclusively by this immutable object; written only in init and deinit.
    private nonisolated(unsafe) let allocation: UnsafeMutableRawPointer
    public let count: Int

    public init<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let count = bytes.count
        // Pages of their own: locked in memory and left out of core dumps (SecretArena).
        let allocation = SecretArena.shared.allocate(count)
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
        SecretArena.shared.release(allocation, count: count)
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

    /// Bytes mapped for secret values and how many of their pages are locked in memory.
    public static var arenaUsage: (mappedBytes: Int, lockedPages: Int) { SecretArena.shared.usage }

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
