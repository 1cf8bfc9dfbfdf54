import CFuse3
import Glibc
import Handover
import Locking

/// The worker's side of the supervisor's in-flight page (`InflightPage`), mapped from the descriptor it passed.
public struct InflightStamps: @unchecked Sendable {
    // Shared memory the supervisor reads only once this process is gone; each FUSE thread writes its own slot.
    let base: UnsafeMutableRawPointer

    /// Maps the page; nil (no stamping) when it cannot be mapped or is not of a layout this build writes.
    public static func map(_ fd: Int32) -> InflightStamps? {
        let mapped = mmap(nil, InflightPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        close(fd)
        guard let mapped, mapped != MAP_FAILED else { return nil }
        guard InflightPage.isValid(UnsafeRawPointer(mapped)) else {
            munmap(mapped, InflightPage.size)
            return nil
        }
        return InflightStamps(base: mapped)
    }
}

/// libfuse's multi-threaded session loop, written out so that each thread can say which request it serves: a fixed
/// set of threads, each reading one request from the device, stamping its slot of the in-flight page with the
/// request's unique, opcode and node id (from the request header), processing it, and clearing the slot.
enum SessionLoop {
    /// How many requests are served at once (libfuse's loop defaults to 10).
    static let threads = 16

    /// Runs until the connection ends; returns 0 or the first negative errno that ended it (-ENODEV: unmounted).
    static func run(_ session: SessionPointer, inflight: InflightStamps?) -> Int32 {
        if let inflight { secretsfs_mark_faults(inflight.base + InflightPage.culpritOffset) }
        let failure = LoopResult()
        var threads: [pthread_t] = []
        for slot in 0..<min(Self.threads, InflightPage.slots) {
            let box = Unmanaged.passRetained(LoopThread(session: session, slot: slot, inflight: inflight, failure: failure))
            var thread = pthread_t()
            let started = pthread_create(&thread, nil, { argument in
                guard let argument else { return nil }
                let loop = Unmanaged<LoopThread>.fromOpaque(argument).takeRetainedValue()
                loop.run()
                return nil
            }, box.toOpaque())
            if started == 0 { threads.append(thread) } else { box.release() }
        }
        for thread in threads { pthread_join(thread, nil) }
        return failure.status.withLock { $0 }
    }
}

/// The first error that ended the loop, shared by its threads.
final class LoopResult: Sendable {
    let status = Locked<Int32>(0)
}

/// One thread of the loop, with its slot.
final class LoopThread: @unchecked Sendable {
    let session: SessionPointer
    let slot: Int
    let inflight: InflightStamps?
    let failure: LoopResult

    init(session: SessionPointer, slot: Int, inflight: InflightStamps?, failure: LoopResult) {
        self.session = session
        self.slot = slot
        self.inflight = inflight
        self.failure = failure
    }

    func run() {
        secretsfs_set_fuse_slot(Int32(slot))
        let se = session.raw
        var buffer = fuse_buf()
        defer { free(buffer.mem) }
        while fuse_session_exited(se) == 0 {
            let received = fuse_session_receive_buf(se, &buffer)
            if received == -EINTR || received == -EAGAIN { continue }
            if received <= 0 {
                if received < 0 {
                    failure.status.withLock { if $0 == 0 { $0 = received } }
                }
                fuse_session_exit(se)
                break
            }
            let request = header(buffer, size: Int(received))
            if let inflight, let request { InflightPage.stamp(inflight.base, slot: slot, request) }
            fuse_session_process_buf(se, &buffer)
            if let inflight, request != nil { InflightPage.clear(inflight.base, slot: slot) }
        }
    }

    /// The request `fuse_in_header` announces (len u32, opcode u32, unique u64, nodeid u64, ...), when it is one
    /// that gets a reply.
    func header(_ buffer: fuse_buf, size: Int) -> InflightPage.Request? {
        guard inflight != nil, size >= 24, let memory = buffer.mem else { return nil }
        let opcode = UInt32(littleEndian: memory.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        guard InflightPage.tracked(opcode: opcode) else { return nil }
        return InflightPage.Request(
            unique: UInt64(littleEndian: memory.loadUnaligned(fromByteOffset: 8, as: UInt64.self)), opcode: opcode,
            node: UInt64(littleEndian: memory.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
    }
}
