import Locking

/// Where a worker reports every node id it issues and every file node the kernel forgets, so that the next worker
/// on the same connection knows them. Reported after the table's lock is released, before the reply that hands
/// the id to the kernel (so a forget can never be reported before its node).
public protocol NodeJournal: Sendable {
    func report(_ events: [NodeEvent])
}

/// What a worker needs to hand its nodes on: the journal and the keyed digest of a value.
public struct NodeHandoff: Sendable {
    public var journal: any NodeJournal
    public var digest: @Sendable (SecretBytes) -> [UInt8]

    public init(journal: any NodeJournal, digest: @escaping @Sendable (SecretBytes) -> [UInt8]) {
        self.journal = journal
        self.digest = digest
    }
}

/// The owner of the inode table: one lock, held only for table work (no syscall, no backend call, no socket write
/// under it); the events a change produces go to the journal once the lock is released.
public final class InodeRegistry: Sendable {
    struct State {
        var table = InodeTable()
        var handoff: NodeHandoff?
    }

    let state = Locked(State())

    public init() {}

    /// Runs `body` on the locked table; reports what it issued or released afterwards.
    public func update<T: Sendable>(_ body: (inout InodeTable, _ digest: (SecretBytes) -> [UInt8], inout [NodeEvent]) -> T) -> T {
        var events: [NodeEvent] = []
        let (result, handoff) = state.withLock { state -> (T, NodeHandoff?) in
            let handoff = state.handoff
            let digest: (SecretBytes) -> [UInt8] = { bytes in handoff?.digest(bytes) ?? [] }
            return (body(&state.table, digest, &events), handoff)
        }
        if !events.isEmpty { handoff?.journal.report(events) }
        return result
    }

    /// A read of the table.
    public func read<T: Sendable>(_ body: (InodeTable) -> T) -> T { state.withLock { body($0.table) } }

    /// Takes over the nodes earlier workers issued and reports every new one to `handoff` from now on.
    public func adopt(_ records: [NodeRecord], nextInode: UInt64, handoff: NodeHandoff) {
        state.withLock { state in
            state.handoff = handoff
            state.table.adopt(records, nextInode: nextInode)
        }
    }
}
