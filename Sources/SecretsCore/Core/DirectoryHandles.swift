import Locking

/// Open directory handles: one listing per handle, so paging through a directory sees one consistent snapshot.
/// Handles are stable values that survive a worker: a handle an earlier worker opened (the kernel keeps it across the
/// switch) is listed again on first use and kept under the same number.
public final class DirectoryHandles: Sendable {
    struct State {
        var next: UInt64
        var open: [UInt64: [DirectoryEntry]] = [:]
    }

    let state: Locked<State>

    /// Handles of one worker start at a random high number, so they never collide with an earlier worker's.
    public init(first: UInt64 = UInt64.random(in: 1...UInt64(1 << 31)) << 32) {
        state = Locked(State(next: first))
    }

    /// A new handle holding `entries`.
    public func open(_ entries: [DirectoryEntry]) -> UInt64 {
        state.withLock { state in
            let handle = state.next
            state.next += 1
            state.open[handle] = entries
            return handle
        }
    }

    /// The listing of `handle`; for a handle this worker did not open, `list()` taken now and kept.
    public func entries(
        _ handle: UInt64, list: () throws(SecretsError) -> [DirectoryEntry]
    ) throws(SecretsError) -> [DirectoryEntry] {
        if let kept = state.withLock({ $0.open[handle] }) { return kept }
        let entries = try list()
        state.withLock { $0.open[handle] = entries }
        return entries
    }

    public func release(_ handle: UInt64) { _ = state.withLock { $0.open.removeValue(forKey: handle) } }

    public var count: Int { state.withLock { $0.open.count } }
}

extension FileSystemCore {
    /// A directory's listing as readdir shows it: `.` and `..` first, then the entries.
    public func listing(_ inode: UInt64, caller: Caller? = nil) throws(SecretsError) -> [DirectoryEntry] {
        let entries = try list(inode, caller: caller)
        return [
            DirectoryEntry(name: ".", inode: inode, isDirectory: true),
            DirectoryEntry(name: "..", inode: parent(of: inode), isDirectory: true),
        ] + entries
    }
}
