import Foundation
import Glibc

/// A unix datagram socket standing in for systemd's notify socket: `name` is a path, or `@name` for the abstract
/// namespace, as in NOTIFY_SOCKET.
public final class NotifySocket: @unchecked Sendable {
    public let name: String
    private let fd: Int32

    public init(name: String) throws {
        self.name = name
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure.message("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(name.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.enumerated() { buffer[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path) ?? 2) + socklen_t(path.count)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else {
            Glibc.close(fd)
            throw TestFailure.message("bind \(name): \(String(cString: strerror(errno)))")
        }
    }

    /// The next datagram, or a failure after `timeout` seconds.
    public func receive(timeout: Double) throws -> String {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else {
            throw TestFailure.message("nothing on the notify socket within \(timeout) s")
        }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 0 else { throw TestFailure.message("recv: \(String(cString: strerror(errno)))") }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }

    public func close() {
        Glibc.close(fd)
        if !name.hasPrefix("@") { unlink(name) }
    }
}
