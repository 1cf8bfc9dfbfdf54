import ArgumentParser
import Glibc
import SecretsCore

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the running daemon's state: stores up or failing and since when, change notices, counts, leases.",
        discussion: """
            Asks the daemon's status server ([metrics] listen in the config) for /status and prints it. Exit 0 when \
            every store answered its last call, 1 when one is failing or the daemon cannot be reached, 2 when the \
            config has no [metrics] table.
            """
    )

    @OptionGroup var options: ConfigOptions

    @Flag(name: .long, help: "Print the raw JSON.")
    var json = false

    func run() throws {
        let config = try Runtime.loadConfig(options.config)
        guard let listen = config.metrics else {
            printError("\(config.file) has no [metrics] listen: the daemon serves no status")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        let body: [UInt8]
        do {
            body = try StatusClient.get("/status", from: listen)
        } catch {
            printError("cannot reach the daemon at \(listen): \(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        if json {
            writeStdout(body)
            return
        }
        guard case .table(let root)? = SecretValue.parseJSON(body), case .array(let stores)? = root["stores"] else {
            printError("the daemon's status is not readable")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        var failing = false
        for case .table(let store) in stores {
            guard case .string(let name)? = store["name"], case .bool(let ok)? = store["ok"] else { continue }
            var since = ""
            if case .int(let seconds)? = store["since"] { since = " since \(Self.time(seconds))" }
            var line = "\(name): \(ok ? "up" : "FAILING")\(since)"
            if case .string(let error)? = store["error"], !ok { line += ": \(error)" }
            print(line)
            failing = failing || !ok
        }
        func number(_ key: String) -> String {
            if case .int(let value)? = root[key] { return "\(value)" }
            return "-"
        }
        var notices = "change notices: \(number("change_notices"))"
        if case .int(let last)? = root["last_change_notice"] { notices += ", last at \(Self.time(last))" }
        print(notices)
        print("live inodes: \(number("live_inodes")), cached envs: \(number("cached_envs")), worker restarts: \(number("worker_restarts"))")
        if case .array(let leases)? = root["leases"] {
            for case .table(let lease) in leases {
                guard case .string(let store)? = lease["store"], case .string(let role)? = lease["role"],
                    case .int(let left)? = lease["seconds_left"]
                else { continue }
                let renewable = lease["renewable"] == .bool(true) ? "renewable" : "not renewable"
                print("lease \(store)/\(role): \(left) s left, \(renewable)")
            }
        }
        if failing { throw ExitCode(ExitStatus.failure.rawValue) }
    }

    static func time(_ seconds: Int64) -> String {
        var value = time_t(seconds)
        var parts = tm()
        gmtime_r(&value, &parts)
        func pad(_ number: Int32) -> String { number < 10 ? "0\(number)" : "\(number)" }
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday)) "
            + "\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)) UTC"
    }
}

/// One GET to the daemon's own status server (HTTP/1.0, connection closed by the server), over TCP or a unix socket.
enum StatusClient {
    static func get(_ path: String, from listen: MetricsListen, timeout: Int = 5) throws(SecretsError) -> [UInt8] {
        let fd: Int32
        switch listen {
        case .unix(let socketPath):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SecretsError(.io, "socket: \(FileIO.errnoText(errno))") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(socketPath.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                throw SecretsError(.invalidArgument, "socket path too long")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { buffer in
                for (index, byte) in bytes.enumerated() { buffer[index] = byte }
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard connected == 0 else {
                let failure = errno
                close(fd)
                throw SecretsError(.storeUnavailable, "connect: \(FileIO.errnoText(failure))")
            }
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var found: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, "\(port)", &hints, &found) == 0, let first = found else {
                throw SecretsError(.storeUnavailable, "cannot resolve \(host)")
            }
            defer { freeaddrinfo(found) }
            fd = socket(first.pointee.ai_family, first.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SecretsError(.io, "socket: \(FileIO.errnoText(errno))") }
            guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
                let failure = errno
                close(fd)
                throw SecretsError(.storeUnavailable, "connect: \(FileIO.errnoText(failure))")
            }
        }
        defer { close(fd) }
        var limit = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.1\r\nHost: secretsfs\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            throw SecretsError(.storeUnavailable, "send: \(FileIO.errnoText(errno))")
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 { throw SecretsError(.timeout, "no answer within \(timeout) s") }
            if count == 0 { break }
            response += buffer[0..<count]
        }
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }) else {
            throw SecretsError(.invalidData, "not an HTTP response")
        }
        return Array(response[(end + 4)...])
    }
}
