import Glibc
import SecretsCore

/// One end of the supervisor–worker control socket: a SOCK_SEQPACKET pair, one `HandoverMessage` a packet, so a
/// message is never split or merged and a dead peer's last messages can still be read.
final class ControlChannel: NodeJournal, Sendable {
    let fd: Int32
    /// The largest message (a hello carries the config text).
    static let maxMessage = 4 << 20

    init(fd: Int32) { self.fd = fd }

    /// A connected pair, both close-on-exec (a worker gets its end with dup2, which clears the flag).
    static func pair() throws(SecretsError) -> (ControlChannel, ControlChannel) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw SecretsError(.io, "socketpair: \(FileIO.errnoText(errno))")
        }
        var size = Int32(maxMessage)
        for fd in fds { setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        return (ControlChannel(fd: fds[0]), ControlChannel(fd: fds[1]))
    }

    @discardableResult
    func send(_ message: HandoverMessage) -> Bool {
        let bytes = message.encoded()
        while true {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent == bytes.count { return true }
            if sent < 0 && errno == EINTR { continue }
            return false
        }
    }

    /// The journal a worker's core reports new and forgotten nodes to; a gone supervisor is not an error here.
    func record(_ message: HandoverMessage) { send(message) }

    enum Received {
        case message(HandoverMessage)
        /// Nothing queued (only with `wait: false`).
        case empty
        /// The peer is gone and everything it sent has been read.
        case closed
    }

    /// The next message; a malformed one counts as the end of the channel.
    func receive(wait: Bool = true) -> Received {
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
            if count > 0 {
                guard let message = try? HandoverMessage.decode(Array(buffer[0..<count])) else { return .closed }
                return .message(message)
            }
            if count == 0 { return .closed }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return .empty }
            return .closed
        }
    }

    func close() { _ = Glibc.close(fd) }
}
