/// Which FUSE requests a worker is serving right now, in one page of shared memory the supervisor creates and maps
/// (protocol version 2 and later): each of the worker's FUSE threads stamps its own slot with the request it took
/// (unique, opcode, node id: never a name or a value) and clears it once answered. When the worker dies, the
/// supervisor reads what was in flight; a request in flight in two crashes in a row is a request of death, answered
/// EIO by the supervisor itself instead of being resent to a third worker.
///
/// A request only counts as one of death when the crash happened on the thread serving it: a worker that dies of a
/// fault (SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE: a Swift trap, an abort) writes the faulting thread's
/// slot as the page's culprit first. A worker killed from outside (SIGKILL, the OOM killer) names none, and what it
/// had in flight is resent as always.
///
/// Layout (little-endian): `SFSI`, u16 version (1), u16 slot count, u32 culprit (slot + 1; 0: none), u32 unused;
/// then slots of 24 bytes: u64 unique (0: free), u32 opcode, u32 unused, u64 node id. The worker writes the unique
/// last when it stamps and first when it clears.
public enum InflightPage {
    public static let size = 4096
    public static let slots = 64
    static let headerSize = 16
    /// Where the culprit slot (+ 1) is, for the worker's fault handler.
    public static let culpritOffset = 8
    static let slotSize = 24
    static let magic: [UInt8] = Array("SFSI".utf8)
    static let layoutVersion: UInt16 = 1
    /// The kernel marks a resent request with this bit in its unique; a reply must carry it.
    public static let resendBit: UInt64 = 1 << 63

    /// One request a worker had read and not answered.
    public struct Request: Hashable, Sendable {
        public var unique: UInt64
        public var opcode: UInt32
        public var node: UInt64

        public init(unique: UInt64, opcode: UInt32, node: UInt64) {
            self.unique = unique
            self.opcode = opcode
            self.node = node
        }

        /// The request's identity across resends (the kernel's unique without the resend bit).
        public var id: UInt64 { unique & ~InflightPage.resendBit }
    }

    /// Requests that get no reply (FORGET, BATCH_FORGET, INTERRUPT) are never stamped: nothing waits on them.
    public static func tracked(opcode: UInt32) -> Bool {
        opcode != 2 && opcode != 42 && opcode != 36
    }

    /// Writes an empty page: the header, every slot free (the supervisor, before a worker gets it).
    public static func reset(_ base: UnsafeMutableRawPointer) {
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        for (index, byte) in magic.enumerated() { base.storeBytes(of: byte, toByteOffset: index, as: UInt8.self) }
        base.storeBytes(of: layoutVersion.littleEndian, toByteOffset: 4, as: UInt16.self)
        base.storeBytes(of: UInt16(slots).littleEndian, toByteOffset: 6, as: UInt16.self)
    }

    /// Whether `base` holds a page of a layout this build writes (a worker checks before stamping).
    public static func isValid(_ base: UnsafeRawPointer) -> Bool {
        magic.indices.allSatisfy { base.load(fromByteOffset: $0, as: UInt8.self) == magic[$0] }
            && UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) == layoutVersion
            && Int(UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 6, as: UInt16.self))) == slots
    }

    static func offset(_ slot: Int) -> Int { headerSize + slot * slotSize }

    /// The worker's side: slot `slot` serves `request` now.
    public static func stamp(_ base: UnsafeMutableRawPointer, slot: Int, _ request: Request) {
        guard (0..<slots).contains(slot) else { return }
        let at = offset(slot)
        base.storeBytes(of: request.opcode.littleEndian, toByteOffset: at + 8, as: UInt32.self)
        base.storeBytes(of: request.node.littleEndian, toByteOffset: at + 16, as: UInt64.self)
        base.storeBytes(of: request.unique.littleEndian, toByteOffset: at, as: UInt64.self)
    }

    /// The worker's side: slot `slot` answered its request.
    public static func clear(_ base: UnsafeMutableRawPointer, slot: Int) {
        guard (0..<slots).contains(slot) else { return }
        base.storeBytes(of: UInt64(0), toByteOffset: offset(slot), as: UInt64.self)
    }

    /// The supervisor's side: the request the worker was serving on the thread that faulted, if it died of a fault.
    public static func culprit(_ base: UnsafeRawPointer) -> Request? {
        guard isValid(base) else { return nil }
        let marked = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: culpritOffset, as: UInt32.self)))
        guard marked > 0, marked <= slots else { return nil }
        let at = offset(marked - 1)
        let unique = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: at, as: UInt64.self))
        guard unique != 0 else { return nil }
        return Request(
            unique: unique, opcode: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)),
            node: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: at + 16, as: UInt64.self)))
    }

    /// The supervisor's side: what the (dead) worker had in flight.
    public static func requests(_ base: UnsafeRawPointer) -> [Request] {
        guard isValid(base) else { return [] }
        return (0..<slots).compactMap { slot in
            let at = offset(slot)
            let unique = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            guard unique != 0 else { return nil }
            return Request(
                unique: unique, opcode: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)),
                node: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: at + 16, as: UInt64.self)))
        }
    }

    /// The request of death of a crash, if any: the one the worker faulted on (`culprit`), when it was in flight in
    /// the crash before too (`previous`). Returned as the page has it (with the resend bit the reply must carry).
    public static func poisoned(previous: [Request], culprit: Request?) -> Request? {
        guard let culprit, previous.contains(where: { $0.id == culprit.id }) else { return nil }
        return culprit
    }

    /// The reply that answers `request` with `-errno` on the connection: a bare `fuse_out_header`.
    public static func errorReply(_ request: Request, errno: Int32) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16)
        withUnsafeBytes(of: UInt32(16).littleEndian) { bytes += $0 }
        withUnsafeBytes(of: (-errno).littleEndian) { bytes += $0 }
        withUnsafeBytes(of: request.unique.littleEndian) { bytes += $0 }
        return bytes
    }

    /// FUSE opcodes by name, for log lines.
    public static func opcodeName(_ opcode: UInt32) -> String {
        let names: [UInt32: String] = [
            1: "LOOKUP", 3: "GETATTR", 14: "OPEN", 15: "READ", 17: "STATFS", 18: "RELEASE", 22: "GETXATTR",
            23: "LISTXATTR", 25: "FLUSH", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 34: "ACCESS", 44: "READDIRPLUS",
        ]
        return names[opcode] ?? "opcode \(opcode)"
    }
}
