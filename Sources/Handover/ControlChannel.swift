import Glibc
import SecretsCore

/// One end of the supervisor–worker control socket: a SOCK_SEQPACKET pair, one `HandoverMessage` a packet, so a
/// message is never split or merged and a dead peer's last messages can still be read. Each end speaks one
/// protocol `version`; from version 1 on, each direction starts with a preamble packet naming it.
public final class ControlChannel: NodeJournal, Sendable {
    public let fd: Int32
    public let version: UInt16
    /// The largest message (a hello carries the config text).
    public static let maxMessage = 4 << 20

    public init(fd: Int32, version: UInt16) {
        self.fd = fd
        self.version = version
    }

    /// A connected pair, both close-on-exec (a worker gets its end with dup2, which clears the flag).
    public static func pair(version: UInt16) throws(SecretsError) -> (ControlChannel, ControlChannel) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw SecretsError(.io, "socketpair: \(FileIO.errnoText(errno))")
        }
        var size = Int32(maxMessage)
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        return (ControlChannel(fd: fds[0], version: version), ControlChannel(fd: fds[1], version: version))
    }

    /// Starts this end's stream: the preamble of its version (nothing for version 0). Call once, before any send.
    @discardableResult
    public func open() -> Bool {
        guard let preamble = HandoverProtocol.preamble(version) else { return true }
        return sendPacket(preamble)
    }

    @discardableResult
    public func send(_ message: HandoverMessage) -> Bool { sendPacket(message.encoded(version: version)) }

    func sendPacket(_ bytes: [UInt8]) -> Bool {
        while true {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent == bytes.count { return true }
            if sent < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// The journal a worker's core reports new and forgotten nodes to; a gone supervisor is not an error here.
    public func report(_ events: [NodeEvent]) {
        for event in events {
            switch event {
            case .issued(let record): send(.node(record))
            case .forgotten(let inode): send(.removed(inode))
            }
        }
    }

    public enum Received: Sendable {
        case message(HandoverMessage)
        /// Nothing queued (only with `wait: false`).
        case empty
        /// The peer is gone and everything it sent has been read.
        case closed
        /// The peer sent something this end cannot read: another protocol version, or garbage.
        case invalid(SecretsError)
    }

    /// The next message. A preamble naming this end's version is passed over; any other is `invalid`.
    public func receive(wait: Bool = true) -> Received {
        while true {
            switch receivePacket(wait: wait) {
            case .empty: return .empty
            case .closed: return .closed
            case .packet(let packet):
                do throws(SecretsError) {
                    if let announced = try HandoverProtocol.preambleVersion(packet) {
                        guard announced == version else {
                            throw SecretsError(
                                .invalidData,
                                "the peer speaks handover protocol \(announced), this end \(version)")
                        }
                        continue
                    }
                    return .message(try HandoverMessage.decode(packet, version: version))
                } catch {
                    return .invalid(error)
                }
            }
        }
    }

    enum Packet {
        case packet([UInt8])
        case empty
        case closed
    }

    func receivePacket(wait: Bool) -> Packet {
        var probe: UInt8 = 0
        while true {
            // The length of the next packet first (MSG_TRUNC reports it whole), then exactly that many bytes.
            let flags = Int32(MSG_PEEK | MSG_TRUNC) | (wait ? 0 : Int32(MSG_DONTWAIT))
            let length = recv(fd, &probe, 1, flags)
            var count = length
            var buffer: [UInt8] = []
            if length > 0 {
                buffer = [UInt8](repeating: 0, count: length)
                count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            }
            if count > 0 { return .packet(Array(buffer[0..<count])) }
            if count == 0 { return .closed }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return .empty }
            return .closed
        }
    }

    public func close() { _ = Glibc.close(fd) }
}

/// The worker's side of the handshake: the supervisor's first packet says which version it speaks (a preamble, or
/// for version 0 the hello itself); the worker answers in that version or refuses.
public enum WorkerHandshake {
    /// The hello and a channel of the supervisor's version on `fd`.
    public static func accept(
        fd: Int32, supported: ClosedRange<UInt16> = HandoverProtocol.supported
    ) throws(SecretsError) -> (ControlChannel, HandoverMessage.Hello) {
        let raw = ControlChannel(fd: fd, version: 0)
        guard case .packet(var packet) = raw.receivePacket(wait: true) else {
            throw SecretsError(.io, "no hello from a supervisor: the worker is started by `secretsfs mount`")
        }
        var version: UInt16 = 0
        if let announced = try HandoverProtocol.preambleVersion(packet) {
            guard supported.contains(announced) else {
                throw SecretsError(
                    .unsupported,
                    "the supervisor speaks handover protocol \(announced); this worker speaks \(supported.lowerBound) to \(supported.upperBound)")
            }
            version = announced
            guard case .packet(let next) = raw.receivePacket(wait: true) else {
                throw SecretsError(.io, "the supervisor went away before its hello")
            }
            packet = next
        }
        guard case .hello(let hello) = try HandoverMessage.decode(packet, version: version) else {
            throw SecretsError(.invalidData, "the supervisor's first message is not a hello")
        }
        let channel = ControlChannel(fd: fd, version: version)
        channel.open()
        return (channel, hello)
    }

    /// After `ready`: the node table of earlier workers and the next id, or nil when the supervisor retired this
    /// worker before it served (the channel closed).
    public static func receiveTable(_ channel: ControlChannel) -> (records: [NodeRecord], nextInode: UInt64)? {
        var records: [NodeRecord] = []
        while true {
            switch channel.receive() {
            case .message(.node(let record)): records.append(record)
            case .message(.go(let next)): return (records, next)
            case .message: continue
            case .empty, .closed, .invalid: return nil
            }
        }
    }
}
