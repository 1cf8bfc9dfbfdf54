import Deadline
import COpenSSL
import Glibc

/// Settings for connections: timeouts and TLS trust.
public struct RedisSettings: Sendable {
    public var endpoint: RedisEndpoint
    /// Bound on connecting and on each command's round trip, in seconds.
    public var timeout: Double
    /// PEM CA bundle for TLS; nil uses the system's.
    public var caFile: String?

    public init(endpoint: RedisEndpoint, timeout: Double = 2, caFile: String? = nil) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.caFile = caFile
    }
}

/// One connection: a socket (TCP or unix), optionally TLS, with deadline-bounded reads and writes.
/// Not thread-safe: a pool hands each connection to one user at a time.
public final class RedisConnection {
    let settings: RedisSettings
    private var fd: Int32 = -1
    private var context: OpaquePointer?
    private var ssl: OpaquePointer?
    private var buffer: [UInt8] = []
    private var position = 0
    /// What one recv/SSL_read fills; kept between reads so a reply costs no allocation.
    private var chunk = [UInt8](repeating: 0, count: 16384)
    private let parser = RESPParser()
    public private(set) var broken = false

    /// Connects, TLS and AUTH/SELECT included, within the timeout (or the operation's deadline, when earlier).
    public init(_ settings: RedisSettings) throws(RedisError) {
        self.settings = settings
        let deadline = OperationDeadline.limit(settings.timeout)
        do {
            try connect(deadline: deadline)
            if settings.endpoint.tls { try startTLS(deadline: deadline) }
            try handshake(deadline: deadline)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public func close() {
        if let ssl {
            SSL_shutdown(ssl)
            SSL_free(ssl)
        }
        if let context { SSL_CTX_free(context) }
        ssl = nil
        context = nil
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        broken = true
        Self.zero(&buffer)
    }

    /// Replies carry secret values: the buffers they passed through are zeroed once used.
    static func zero(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { if let base = $0.baseAddress { explicit_bzero(base, $0.count) } }
    }

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    // MARK: Connecting

    private func connect(deadline: Double) throws(RedisError) {
        let endpoint = settings.endpoint
        switch endpoint.address {
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { throw RedisError(.connection, "socket: \(String(cString: strerror(errno)))") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                throw RedisError(.connection, "unix socket path too long")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            try finishConnect(result, deadline: deadline)
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_family = AF_UNSPEC
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(host, String(port), &hints, &list)
            guard status == 0, let first = list else {
                throw RedisError(.connection, "cannot resolve \(host): \(String(cString: gai_strerror(status)))")
            }
            defer { freeaddrinfo(list) }
            var lastError: RedisError = RedisError(.connection, "no address for \(host)")
            var cursor: UnsafeMutablePointer<addrinfo>? = first
            while let info = cursor {
                cursor = info.pointee.ai_next
                fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), info.pointee.ai_protocol)
                guard fd >= 0 else { continue }
                var one: Int32 = 1
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                let result = Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen)
                do {
                    try finishConnect(result, deadline: deadline)
                    return
                } catch {
                    lastError = error
                    Glibc.close(fd)
                    fd = -1
                }
            }
            throw lastError
        }
    }

    private func finishConnect(_ result: Int32, deadline: Double) throws(RedisError) {
        if result == 0 { return }
        guard errno == EINPROGRESS || errno == EAGAIN else {
            throw RedisError(.connection, "connect to \(settings.endpoint): \(String(cString: strerror(errno)))")
        }
        try wait(for: Int16(POLLOUT), deadline: deadline, what: "connect")
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        guard error == 0 else {
            throw RedisError(.connection, "connect to \(settings.endpoint): \(String(cString: strerror(error)))")
        }
    }

    private func wait(for events: Int16, deadline: Double, what: String) throws(RedisError) {
        while true {
            let remaining = deadline - Self.now()
            guard remaining > 0 else {
                broken = true
                throw RedisError(.timeout, "\(what) to \(settings.endpoint) timed out after \(settings.timeout)s")
            }
            var poller = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&poller, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR {
                broken = true
                throw RedisError(.connection, "poll: \(String(cString: strerror(errno)))")
            }
        }
    }

    private func startTLS(deadline: Double) throws(RedisError) {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw RedisError(.tls, "cannot create a TLS context") }
        self.context = context
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        if let caFile = settings.caFile {
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else {
                throw RedisError(.tls, "cannot load CA file \(caFile)")
            }
        } else {
            SSL_CTX_set_default_verify_paths(context)
        }
        guard let ssl = SSL_new(context) else { throw RedisError(.tls, "cannot create a TLS session") }
        self.ssl = ssl
        SSL_set_fd(ssl, fd)
        if case .tcp(let host, _) = settings.endpoint.address {
            _ = secretsfs_ssl_set_hostname(ssl, host)
            let param = SSL_get0_param(ssl)
            if host.contains(":") || host.allSatisfy({ $0.isNumber || $0 == "." }) {
                X509_VERIFY_PARAM_set1_ip_asc(param, host)
            } else {
                X509_VERIFY_PARAM_set1_host(param, host, 0)
            }
        }
        while true {
            let result = SSL_connect(ssl)
            if result == 1 { return }
            let code = SSL_get_error(ssl, result)
            if code == secretsfs_ssl_want_read() {
                try wait(for: Int16(POLLIN), deadline: deadline, what: "TLS handshake")
            } else if code == secretsfs_ssl_want_write() {
                try wait(for: Int16(POLLOUT), deadline: deadline, what: "TLS handshake")
            } else {
                let reason = ERR_get_error()
                var text = [CChar](repeating: 0, count: 256)
                ERR_error_string_n(reason, &text, text.count)
                let message = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw RedisError(.tls, "TLS handshake with \(settings.endpoint) failed: \(message)")
            }
        }
    }

    private func handshake(deadline: Double) throws(RedisError) {
        let endpoint = settings.endpoint
        if let password = endpoint.password {
            var arguments = ["AUTH"]
            if let username = endpoint.username { arguments.append(username) }
            arguments.append(password)
            let reply = try pipeline([arguments.map { Array($0.utf8) }], deadline: deadline)[0]
            if case .error(let message) = reply {
                // The server's words ("WRONGPASS invalid username-password pair") never contain the password.
                throw RedisError(.authentication, "authentication to \(endpoint) failed: \(message)")
            }
        }
        if endpoint.database != 0 {
            let reply = try pipeline([["SELECT", String(endpoint.database)].map { Array($0.utf8) }], deadline: deadline)[0]
            if case .error(let message) = reply {
                throw RedisError(.server, "SELECT \(endpoint.database) on \(endpoint) failed: \(message)")
            }
        }
    }

    // MARK: I/O

    private func writeAll(_ bytes: [UInt8], deadline: Double) throws(RedisError) {
        var offset = 0
        while offset < bytes.count {
            let written: Int
            if let ssl {
                written = bytes.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress else { return 0 }
                    return Int(SSL_write(ssl, base + offset, Int32(min(raw.count - offset, Int(Int32.max)))))
                }
                if written <= 0 {
                    let code = SSL_get_error(ssl, Int32(written))
                    if code == secretsfs_ssl_want_write() || code == secretsfs_ssl_want_read() {
                        try wait(for: Int16(code == secretsfs_ssl_want_write() ? POLLOUT : POLLIN), deadline: deadline, what: "write")
                        continue
                    }
                    broken = true
                    throw RedisError(.connection, "TLS write to \(settings.endpoint) failed")
                }
            } else {
                written = bytes.withUnsafeBytes { raw in
                    guard let base = raw.baseAddress else { return 0 }
                    return send(fd, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                }
                if written < 0 {
                    if errno == EAGAIN || errno == EINTR {
                        try wait(for: Int16(POLLOUT), deadline: deadline, what: "write")
                        continue
                    }
                    broken = true
                    throw RedisError(.connection, "write to \(settings.endpoint): \(String(cString: strerror(errno)))")
                }
            }
            offset += written
        }
    }

    private func fill(deadline: Double) throws(RedisError) {
        if position > 0 && position == buffer.count {
            Self.zero(&buffer)
            buffer.removeAll(keepingCapacity: true)
            position = 0
        }
        while true {
            if let ssl {
                let count = chunk.withUnsafeMutableBytes { Int(SSL_read(ssl, $0.baseAddress, Int32($0.count))) }
                if count > 0 {
                    buffer += chunk[0..<count]
                    chunk.withUnsafeMutableBytes { if let base = $0.baseAddress { explicit_bzero(base, count) } }
                    return
                }
                let code = SSL_get_error(ssl, Int32(count))
                if code == secretsfs_ssl_want_read() || code == secretsfs_ssl_want_write() {
                    try wait(for: Int16(code == secretsfs_ssl_want_read() ? POLLIN : POLLOUT), deadline: deadline, what: "read")
                    continue
                }
                broken = true
                throw RedisError(.connection, "connection to \(settings.endpoint) closed")
            } else {
                let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if count > 0 {
                    buffer += chunk[0..<count]
                    chunk.withUnsafeMutableBytes { if let base = $0.baseAddress { explicit_bzero(base, count) } }
                    return
                }
                if count == 0 {
                    broken = true
                    throw RedisError(.connection, "connection to \(settings.endpoint) closed by the server")
                }
                if errno == EAGAIN || errno == EINTR {
                    try wait(for: Int16(POLLIN), deadline: deadline, what: "read")
                    continue
                }
                broken = true
                throw RedisError(.connection, "read from \(settings.endpoint): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Reads one reply, waiting until `deadline` (nil: the settings' timeout from now, or the operation's deadline
    /// when earlier; .infinity: forever).
    public func readReply(deadline: Double? = nil) throws(RedisError) -> RESPValue {
        let limit = deadline ?? OperationDeadline.limit(settings.timeout)
        while true {
            do {
                if let (value, next) = try parser.parse(buffer, from: position) {
                    position = next
                    return value
                }
            } catch {
                broken = true
                throw error
            }
            try fill(deadline: limit)
        }
    }

    /// Sends commands in one write and reads their replies (a pipeline: one round trip), all within the timeout
    /// (or the operation's deadline, when earlier).
    public func pipeline(_ commands: [[[UInt8]]], deadline: Double? = nil) throws(RedisError) -> [RESPValue] {
        guard !broken else { throw RedisError(.connection, "connection to \(settings.endpoint) is closed") }
        let deadline = deadline ?? OperationDeadline.limit(settings.timeout)
        var request: [UInt8] = []
        for command in commands { request += RESPParser.encode(command) }
        try writeAll(request, deadline: deadline)
        var replies: [RESPValue] = []
        for _ in commands { replies.append(try readReply(deadline: deadline)) }
        return replies
    }

    public func command(_ arguments: [[UInt8]]) throws(RedisError) -> RESPValue {
        try pipeline([arguments])[0]
    }

    public func command(_ arguments: String...) throws(RedisError) -> RESPValue {
        try command(arguments.map { Array($0.utf8) })
    }

    /// Whether a reply can be read without blocking (buffered bytes, TLS-buffered bytes, or a readable socket).
    /// A closed socket counts as readable: the next read reports it.
    public func waitReadable(timeout: Double) -> Bool {
        if position < buffer.count { return true }
        if let ssl, SSL_pending(ssl) > 0 { return true }
        guard fd >= 0 else { return false }
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&poller, 1, Int32(timeout * 1000)) > 0
    }

    /// Sends without waiting for a reply (subscriptions).
    public func sendCommand(_ arguments: [String]) throws(RedisError) {
        try writeAll(RESPParser.encode(arguments.map { Array($0.utf8) }), deadline: Self.now() + settings.timeout)
    }
}
