import CLinux
import Glibc
import Handover
import Logging
import SecretsCore

/// One worker's in-flight page (`InflightPage`), created and mapped by the supervisor, handed to the worker as a
/// descriptor. The supervisor only reads it, and only after the worker died.
struct InflightMapping {
    let fd: Int32
    let base: UnsafeMutableRawPointer

    /// A new, empty page (nil when memfd or mmap fail: the worker then runs without one, as one of version 1 would).
    static func create() -> InflightMapping? {
        let fd = secretsfs_memfd("secretsfs-inflight")
        guard fd >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        guard ftruncate(fd, off_t(InflightPage.size)) == 0, let mapping = map(fd) else {
            close(fd)
            return nil
        }
        InflightPage.reset(mapping.base)
        return mapping
    }

    /// Maps an existing page (a re-executed supervisor, from its saved descriptor).
    static func map(_ fd: Int32) -> InflightMapping? {
        let base = mmap(nil, InflightPage.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let base, base != MAP_FAILED else { return nil }
        return InflightMapping(fd: fd, base: base)
    }

    var requests: [InflightPage.Request] { InflightPage.requests(UnsafeRawPointer(base)) }
    var culprit: InflightPage.Request? { InflightPage.culprit(UnsafeRawPointer(base)) }

    func release() {
        munmap(base, InflightPage.size)
        close(fd)
    }
}

/// Requests of death: a request in flight when a worker crashed, that the worker it was resent to crashed on
/// (faulted on the thread serving it), is answered EIO on the connection by the supervisor and not resent a third
/// time. Every other request is resent to the next worker as always.
struct RequestsOfDeath {
    /// What the last crashed worker had in flight (empty after a worker retired cleanly or nothing was known).
    var lastCrash: [InflightPage.Request] = []

    /// A worker died: answers its request of death, remembers the rest. Returns how many it answered.
    mutating func workerCrashed(_ page: InflightMapping?, fuseFD: Int32, logger: Logger) -> Int {
        let inflight = page?.requests ?? []
        let poisoned = InflightPage.poisoned(previous: lastCrash, culprit: page?.culprit).map { [$0] } ?? []
        for request in poisoned {
            let reply = InflightPage.errorReply(request, errno: EIO)
            let written = reply.withUnsafeBytes { write(fuseFD, $0.baseAddress, $0.count) }
            logger.error(
                "a request was in flight in two worker crashes in a row: answered EIO by the supervisor, not resent",
                metadata: [
                    "opcode": "\(InflightPage.opcodeName(request.opcode))", "node": "\(request.node)",
                    "answered": "\(written == reply.count)",
                ])
        }
        let answered = Set(poisoned.map(\.id))
        lastCrash = inflight.filter { !answered.contains($0.id) }
        return poisoned.count
    }
}
