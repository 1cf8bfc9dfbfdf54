import CLinux
import Glibc
import SecretsCore

/// What a running supervisor and an independent process that takes its mount over say to each other on the
/// takeover socket (`[mount] takeover_socket`, SOCK_SEQPACKET, one message a packet, each starting with `SFST`).
///
/// 1. new → old: `request` with the handover protocol versions it speaks (the only message read before a version
///    is agreed, so any later version still understands it).
/// 2. old → new: `offer` in the newest version both speak (3 or later), with descriptors: a memfd of the
///    supervisor state (`SupervisorState`, no worker), the `/dev/fuse` open file, the workers' snapshot memfd if
///    any, and fusermount3's auto_unmount sockets. Or `refused` with the reason; the old one keeps serving.
/// 3. new → old: `prepared`, once its own worker has built its stores and is ready to serve.
/// 4. old → new: `final`, after the old worker is gone, with a memfd of the state as it is now (the node table the
///    old worker left). The old supervisor then exits 0 without unmounting; the new worker resends and serves.
///
/// A new process that goes away before `prepared` changes nothing: the old worker never stopped.
public enum TakeoverMessage: Sendable, Equatable {
    case request(ClosedRange<UInt16>)
    case offer(version: UInt16, hasSnapshot: Bool, unmountSockets: Int)
    case prepared
    case final
    case refused(String)

    static let magic: [UInt8] = Array("SFST".utf8)

    public func encoded() -> [UInt8] {
        var writer = HandoverWriter()
        writer.raw(Self.magic)
        switch self {
        case .request(let range):
            writer.byte(1)
            writer.u16(range.lowerBound)
            writer.u16(range.upperBound)
        case .offer(let version, let hasSnapshot, let sockets):
            writer.byte(2)
            writer.u16(version)
            writer.bool(hasSnapshot)
            writer.u64(UInt64(sockets))
        case .prepared:
            writer.byte(3)
        case .final:
            writer.byte(4)
        case .refused(let reason):
            writer.byte(5)
            writer.string(reason)
        }
        return writer.output
    }

    public static func decode(_ bytes: [UInt8]) throws(SecretsError) -> TakeoverMessage {
        var reader = HandoverReader(bytes)
        guard reader.skip(prefix: magic) else { throw SecretsError(.invalidData, "not a takeover message") }
        let message: TakeoverMessage
        switch try reader.byte() {
        case 1:
            let low = try reader.u16()
            let high = try reader.u16()
            guard low <= high else { throw SecretsError(.invalidData, "takeover request with versions \(low) to \(high)") }
            message = .request(low...high)
        case 2:
            let version = try reader.u16()
            let snapshot = try reader.bool()
            let sockets = try reader.u64()
            guard sockets <= 8 else { throw SecretsError(.invalidData, "takeover offer with \(sockets) unmount sockets") }
            message = .offer(version: version, hasSnapshot: snapshot, unmountSockets: Int(sockets))
        case 3: message = .prepared
        case 4: message = .final
        case 5: message = .refused(try reader.string())
        case let tag: throw SecretsError(.invalidData, "unknown takeover message \(tag)")
        }
        try reader.finish()
        return message
    }
}

/// One end of a takeover connection.
public struct TakeoverChannel: Sendable {
    public let fd: Int32

    public init(fd: Int32) { self.fd = fd }

    /// Listens at `path` (its directory created 0700 when missing), replacing a stale socket there.
    public static func listen(at path: String) throws(SecretsError) -> Int32 {
        let directory = path.split(separator: "/").dropLast().reduce("") { $0 + "/" + $1 }
        if !directory.isEmpty, access(directory, F_OK) != 0 { try FileIO.makeDirectories(directory, mode: 0o700) }
        unlink(path)
        let fd = secretsfs_unix_seqpacket(path, 1)
        guard fd >= 0 else {
            throw SecretsError(.io, "cannot listen for takeovers at \(path): \(FileIO.errnoText(errno))")
        }
        chmod(path, 0o600)
        // Polled with the supervisor's other descriptors: accepting never blocks.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Connects to a running supervisor's takeover socket.
    public static func connect(to path: String) throws(SecretsError) -> TakeoverChannel {
        let fd = secretsfs_unix_seqpacket(path, 0)
        guard fd >= 0 else {
            throw SecretsError(.notFound, "no supervisor answers at \(path): \(FileIO.errnoText(errno))")
        }
        return TakeoverChannel(fd: fd)
    }

    /// The next connection on a listening socket, if one is waiting.
    public static func accept(_ listener: Int32) -> TakeoverChannel? {
        let fd = Glibc.accept(listener, nil, nil)
        guard fd >= 0 else { return nil }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        return TakeoverChannel(fd: fd)
    }

    /// The peer's pid and uid (SO_PEERCRED: as it was when it connected).
    public func peer() -> (pid: Int32, uid: UInt32)? {
        var peer = secretsfs_peer()
        guard secretsfs_peer_credentials(fd, &peer) == 0 else { return nil }
        return (peer.pid, peer.uid)
    }

    @discardableResult
    public func send(_ message: TakeoverMessage, descriptors: [Int32] = []) -> Bool {
        let bytes = message.encoded()
        let sent = bytes.withUnsafeBytes { buffer in
            descriptors.withUnsafeBufferPointer {
                secretsfs_send_with_fds(fd, buffer.baseAddress, UInt(buffer.count), $0.baseAddress, Int32($0.count))
            }
        }
        return sent == bytes.count
    }

    public enum Received: Sendable {
        case message(TakeoverMessage, [Int32])
        case closed
        case timedOut
        case invalid(SecretsError)
    }

    /// The next message and the descriptors it carried (close-on-exec), waiting at most `timeout` seconds.
    public func receive(timeout: Double) -> Received {
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let waited = poll(&ready, 1, Int32(max(0, timeout * 1000)))
        if waited == 0 { return .timedOut }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = [Int32](repeating: -1, count: 16)
        var count: Int32 = 0
        let received = buffer.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer { secretsfs_receive_with_fds(fd, raw.baseAddress, UInt(raw.count), $0.baseAddress, &count) }
        }
        let descriptors = Array(fds.prefix(Int(count)))
        if received == 0 { return .closed }
        guard received > 0 else {
            descriptors.forEach { Glibc.close($0) }
            return received == -2 ? .invalid(SecretsError(.invalidData, "takeover message truncated")) : .closed
        }
        do {
            return .message(try TakeoverMessage.decode(Array(buffer[0..<received])), descriptors)
        } catch {
            descriptors.forEach { Glibc.close($0) }
            return .invalid(error)
        }
    }

    public func close() { _ = Glibc.close(fd) }
}

extension SupervisorState {
    /// The state, in `version`, in a new memfd (rewound), for a takeover; nil if it cannot be made.
    public func memfd(version: UInt16) -> Int32? {
        let fd = secretsfs_memfd("secretsfs-takeover-state")
        guard fd >= 0 else { return nil }
        let bytes = encoded(version: version)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, lseek(fd, 0, SEEK_SET) == 0 else {
            Glibc.close(fd)
            return nil
        }
        return fd
    }

    /// The state a memfd holds (closed afterwards), in any version this binary reads.
    public static func read(memfd fd: Int32) throws(SecretsError) -> (SupervisorState, UInt16) {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        Glibc.close(fd)
        return try decode(bytes)
    }
}
