import Glibc
import Locking

/// Where `SecretBytes` keep their bytes: pages of their own, mapped for secrets only, locked in memory (never
/// swapped; best effort, as RLIMIT_MEMLOCK allows) and marked `MADV_DONTDUMP` (left out of any core dump). Small
/// values come from per-size free lists carved out of 256 KiB chunks; large ones get a mapping each.
final class SecretArena: Sendable {
    static let shared = SecretArena()
    static let chunkSize = 256 << 10
    static let slabSize = 16 << 10
    /// Size classes: 16, 32, ... 64 KiB; anything larger is mapped on its own.
    static let classes: [Int] = (4...16).map { 1 << $0 }

    /// An address inside the arena's own mappings; only the arena hands it out and takes it back.
    struct Block: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
    }

    struct State {
        var free: [[Block]] = Array(repeating: [], count: SecretArena.classes.count)
        var chunk: Block?
        var chunkUsed = SecretArena.chunkSize
        var lockedPages = 0
        var mappedBytes = 0
    }

    private let state = Locked(State())

    /// Whether the pages could be locked (false: RLIMIT_MEMLOCK reached; they are still left out of dumps).
    private static func map(_ size: Int) -> (UnsafeMutableRawPointer, Bool)? {
        guard let raw = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            raw != MAP_FAILED
        else { return nil }
        _ = madvise(raw, size, MADV_DONTDUMP)
        let locked = mlock(raw, size) == 0
        return (raw, locked)
    }

    func allocate(_ count: Int) -> UnsafeMutableRawPointer {
        let size = max(count, 1)
        guard let index = Self.classes.firstIndex(where: { $0 >= size }) else {
            let rounded = (size + 4095) & ~4095
            if let (raw, locked) = Self.map(rounded) {
                state.withLock {
                    $0.mappedBytes += rounded
                    if locked { $0.lockedPages += rounded / 4096 }
                }
                return raw
            }
            return UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        }
        let fromArena: Block? = state.withLock { state -> Block? in
            if let block = state.free[index].popLast() { return block }
            // A new slab of this class from the current chunk (a new chunk when it is used up).
            if state.chunkUsed + Self.slabSize > Self.chunkSize {
                guard let (raw, locked) = Self.map(Self.chunkSize) else { return nil }
                state.chunk = Block(pointer: raw)
                state.chunkUsed = 0
                state.mappedBytes += Self.chunkSize
                if locked { state.lockedPages += Self.chunkSize / 4096 }
            }
            guard let chunk = state.chunk else { return nil }
            let slab = chunk.pointer + state.chunkUsed
            state.chunkUsed += Self.slabSize
            let blockSize = Self.classes[index]
            for offset in stride(from: blockSize, to: Self.slabSize, by: blockSize) {
                state.free[index].append(Block(pointer: slab + offset))
            }
            return Block(pointer: slab)
        }
        return fromArena?.pointer ?? UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
    }

    /// Takes back a block `allocate(count)` gave (already wiped by the caller).
    func release(_ pointer: UnsafeMutableRawPointer, count: Int) {
        let size = max(count, 1)
        guard let index = Self.classes.firstIndex(where: { $0 >= size }) else {
            let rounded = (size + 4095) & ~4095
            if munmap(pointer, rounded) == 0 {
                state.withLock { $0.mappedBytes -= rounded }
            }
            return
        }
        let block = Block(pointer: pointer)
        state.withLock { $0.free[index].append(block) }
    }

    /// Bytes mapped for secrets, and how many of their pages are locked (for tests and diagnostics).
    var usage: (mappedBytes: Int, lockedPages: Int) { state.withLock { ($0.mappedBytes, $0.lockedPages) } }
}
