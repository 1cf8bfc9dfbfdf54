import Crypto
import Dispatch
import Foundation
import Handover
import Locking
import Logging
import SecretsCore

/// The workers' last-known-good: the cached env views and listings, sealed with ChaCha20-Poly1305 under a key derived
/// from the mount's digest key (HKDF-SHA256), in the memfd the supervisor made for the mount and passes to every
/// worker. The supervisor never reads or maps it; a worker reads it once when it starts and rewrites it after every
/// fetch it keeps. The file is the sealed box alone (nonce, ciphertext, tag); anything that does not open is ignored.
final class SnapshotFile: Sendable {
    let fd: Int32
    let key: SymmetricKey
    let logger: Logger
    let writes = CoalescedWrites(label: "secretsfs.snapshot", delay: 0)

    init(fd: Int32, digestKey: [UInt8], logger: Logger) {
        self.fd = fd
        self.key = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: digestKey), info: Array("secretsfs view snapshot 1".utf8),
            outputByteCount: 32)
        self.logger = logger
    }

    /// What the previous worker left, or nil (none yet, or torn by a writer at that moment, or not ours).
    func read() -> FileSystemCore.CachedState? {
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_size > 0, info.st_size < 1 << 30 else {
            logger.debug("no view snapshot yet", metadata: ["size": "\(info.st_size)", "errno": "\(errno)"])
            return nil
        }
        var sealed = [UInt8](repeating: 0, count: Int(info.st_size))
        let count = sealed.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count == sealed.count, let box = try? ChaChaPoly.SealedBox(combined: sealed),
            var plain = try? Array(ChaChaPoly.open(box, using: key))
        else {
            logger.warning("the previous worker's view snapshot does not open; starting without it", metadata: ["read": "\(count)"])
            return nil
        }
        defer { wipe(&plain) }
        guard let snapshot = try? ViewSnapshot.decode(plain) else {
            logger.warning("the previous worker's view snapshot is not one this binary reads; starting without it")
            return nil
        }
        return FileSystemCore.CachedState(
            views: snapshot.views.map { ($0.key, $0.fetchedAt, $0.view) },
            listings: snapshot.listings.map { ($0.top, $0.at, $0.envs) }, leases: snapshot.leases)
    }

    /// Rewrites the snapshot from `core` soon (changes that come while a write waits are written together).
    /// With the leases of `leasing` (the leased stores): a lease outlives its worker.
    func changed(_ core: FileSystemCore, leasing: [any LeaseCarrying] = []) {
        writes.schedule { [self] in
            var state = core.cachedState()
            state.leases = leasing.flatMap { $0.carriedLeases() }
            write(state)
        }
    }

    func write(_ state: FileSystemCore.CachedState) {
        let snapshot = ViewSnapshot(
            views: state.views.map { ViewSnapshot.View(key: $0.key, fetchedAt: $0.fetchedAt, view: $0.view) },
            listings: state.listings.map { ViewSnapshot.Listing(top: $0.top, at: $0.at, envs: $0.envs) },
            leases: state.leases)
        var plain = snapshot.encoded()
        defer { wipe(&plain) }
        guard let sealed = try? ChaChaPoly.seal(plain, using: key).combined else {
            logger.warning("cannot seal the view snapshot; the next worker starts without it")
            return
        }
        let bytes = Array(sealed)
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        if written == bytes.count { _ = ftruncate(fd, off_t(bytes.count)) }
        logger.trace("view snapshot written", metadata: ["views": "\(state.views.count)", "bytes": "\(written)"])
        if !state.leases.isEmpty, written == bytes.count {
            logger.debug("snapshot written with the leases for the next worker", metadata: ["leases": "\(state.leases.count)"])
        }
    }
}

/// Work that many changes ask for, run once on a queue of its own `delay` seconds after the first of them: the
/// changes that come while it waits are covered by that one run.
final class CoalescedWrites: Sendable {
    let queue: DispatchQueue
    let delay: Double
    let scheduled = Locked(false)

    init(label: String, delay: Double) {
        queue = DispatchQueue(label: label)
        self.delay = delay
    }

    func schedule(_ work: @escaping @Sendable () -> Void) {
        let first = scheduled.withLock { scheduled in
            defer { scheduled = true }
            return !scheduled
        }
        guard first else { return }
        queue.asyncAfter(deadline: .now() + delay) { [self] in
            scheduled.withLock { $0 = false }
            work()
        }
    }
}
