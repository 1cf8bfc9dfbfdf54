import Age
import Dispatch
import Foundation
import Handover
import Locking
import Logging
import SecretsCore

/// `[cache] persist`: the worker's cached env views and listings on disk, age-encrypted to the recipient of
/// `persist_identity` (or the systemd credential `secretsfs-cache-identity`), rewritten atomically with mode 0600
/// about a second after each fetch the worker keeps. A mount's first worker reads it and takes its views as
/// stale-only entries: they are served only while their store cannot be reached, within `stale_if_error`, so a
/// restart or a reboot during an outage still serves cached keys. A file that does not open (tampered, another
/// key, another format) is ignored with a warning and never served.
///
/// Inside the age payload: `SFSC`, a u16 format version, the wall and monotonic clocks at writing (f64 bit
/// patterns, little-endian), then the view snapshot's own encoding. Fetch times are monotonic; the two clocks
/// carry them across a reboot, where the monotonic clock starts again.
final class PersistedCache: Sendable {
    static let magic = Array("SFSC".utf8)
    static let version: UInt16 = 1

    let path: String
    let identity: X25519Identity
    let logger: Logger
    let writes = CoalescedWrites(label: "secretsfs.persisted-cache", delay: 1)
    let warnedWrite = Locked(false)

    /// The tops whose views are written: those that read a networked store (a view of local files or the
    /// environment is never needed during an outage, so its values do not get a second copy on disk).
    let tops: Set<String>

    /// Nil (with a warning) when the identity cannot be read: the mount serves, without a persisted cache.
    init?(path: String, identityPath: String, config: Config, logger: Logger) {
        self.path = path
        self.logger = logger
        let local: Set<String> = ["file", "env"]
        let networked = Set(config.stores.filter { !local.contains($0.type) }.map(\.name))
        tops = networked.union(
            config.scopes.filter { scope in scope.chain.contains { networked.contains($0.store) } }.map(\.name))
        do {
            let text = try String(contentsOfFile: identityPath, encoding: .utf8)
            guard let first = try X25519Identity.parseFile(text).first else {
                logger.warning(
                    "the persisted cache's identity file holds no identity; running without a persisted cache",
                    metadata: ["identity": "\(identityPath)"])
                return nil
            }
            identity = first
        } catch {
            logger.warning(
                "cannot read the persisted cache's identity; running without a persisted cache",
                metadata: ["identity": "\(identityPath)", "error": "\(Self.describe(error))"])
            return nil
        }
    }

    static func wallSeconds() -> Double {
        let now = CoreClock.wall()
        return Double(now.seconds) + Double(now.nanoseconds) / 1e9
    }

    static func describe(_ error: any Error) -> String {
        if let age = error as? AgeError { return age.message }
        return "\(error)"
    }

    /// What the file holds, fetch times moved onto this boot's monotonic clock; nil when there is no file or it
    /// does not open (logged).
    func read() -> FileSystemCore.CachedState? {
        guard let data = FileManager.default.contents(atPath: path) else {
            logger.debug("no persisted cache yet", metadata: ["path": "\(path)"])
            return nil
        }
        var plain: [UInt8]
        do {
            plain = try AgeFile.decrypt(Array(data), identities: [.x25519(identity)])
        } catch {
            logger.warning(
                "the persisted cache does not open (tampered, or encrypted to another key); ignored, never served",
                metadata: ["path": "\(path)", "error": "\(error.message)"])
            return nil
        }
        defer { wipe(&plain) }
        let header = Self.magic.count + 2 + 16
        guard plain.count >= header, Array(plain[0..<4]) == Self.magic,
            UInt16(plain[4]) | UInt16(plain[5]) << 8 == Self.version,
            let snapshot = try? ViewSnapshot.decode(Array(plain[header...]))
        else {
            logger.warning("the persisted cache is not in a format this binary reads; ignored", metadata: ["path": "\(path)"])
            return nil
        }
        func double(at offset: Int) -> Double {
            var bits: UInt64 = 0
            for index in 0..<8 { bits |= UInt64(plain[offset + index]) << (8 * UInt64(index)) }
            return Double(bitPattern: bits)
        }
        let writtenWall = double(at: 6)
        let writtenMono = double(at: 14)
        // A fetch `writtenMono - at` seconds before the writing, which was `now wall - written wall` ago.
        let shift = (CoreClock.monotonic() - max(0, Self.wallSeconds() - writtenWall)) - writtenMono
        return FileSystemCore.CachedState(
            views: snapshot.views.map { ($0.key, $0.fetchedAt + shift, $0.view) },
            listings: snapshot.listings.map { ($0.top, $0.at + shift, $0.envs) })
    }

    /// Rewrites the file from `core` in about a second (the fetches of that second are written together).
    func changed(_ core: FileSystemCore) {
        writes.schedule { [self] in write(core.cachedState()) }
    }

    func write(_ state: FileSystemCore.CachedState) {
        let snapshot = ViewSnapshot(
            views: state.views.filter { tops.contains($0.key.top) }
                .map { ViewSnapshot.View(key: $0.key, fetchedAt: $0.fetchedAt, view: $0.view) },
            listings: state.listings.filter { tops.contains($0.top) }
                .map { ViewSnapshot.Listing(top: $0.top, at: $0.at, envs: $0.envs) })
        var plain = Self.magic + [UInt8(Self.version & 0xff), UInt8(Self.version >> 8)]
        for value in [Self.wallSeconds(), CoreClock.monotonic()] {
            let bits = value.bitPattern
            for index in 0..<8 { plain.append(UInt8(truncatingIfNeeded: bits >> (8 * UInt64(index)))) }
        }
        var body = snapshot.encoded()
        plain += body
        wipe(&body)
        defer { wipe(&plain) }
        do {
            let sealed = try AgeFile.encrypt(plain, to: [.x25519(identity.recipient)])
            try FileIO.writeAtomically(path, bytes: sealed, mode: 0o600)
            warnedWrite.withLock { $0 = false }
            logger.debug("persisted cache written", metadata: ["views": "\(snapshot.views.count)", "bytes": "\(sealed.count)"])
        } catch {
            let first = warnedWrite.withLock { warned in
                defer { warned = true }
                return !warned
            }
            if first {
                logger.warning(
                    "cannot write the persisted cache; a restart during an outage will not have it",
                    metadata: ["path": "\(path)", "error": "\(Self.describe(error))"])
            }
        }
    }
}
