/// Where and how to reach a Redis server: `redis://[user:pass@]host:port/db`, `rediss://...` (TLS),
/// `unix:///path/to/socket?db=N`.
public struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    public enum Address: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var address: Address
    public var tls: Bool
    public var username: String?
    public var password: String?
    public var database: Int

    public init(address: Address, tls: Bool = false, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.address = address
        self.tls = tls
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses a URL; the error never repeats the URL (it may hold a password).
    public init(url: String) throws(RedisError) {
        func fail(_ why: String) -> RedisError { RedisError(.connection, "invalid Redis URL: \(why)") }
        var rest: Substring
        if url.hasPrefix("unix://") {
            rest = url.dropFirst("unix://".count)
            var database = 0
            if let question = rest.firstIndex(of: "?") {
                let query = rest[rest.index(after: question)...]
                rest = rest[..<question]
                for pair in query.split(separator: "&") where pair.hasPrefix("db=") {
                    guard let value = Int(pair.dropFirst(3)), value >= 0 else { throw fail("db must be a number") }
                    database = value
                }
            }
            guard rest.hasPrefix("/") else { throw fail("unix:// needs an absolute socket path") }
            self.init(address: .unix(path: String(rest)), database: database)
            return
        }
        let tls: Bool
        if url.hasPrefix("rediss://") {
            tls = true
            rest = url.dropFirst("rediss://".count)
        } else if url.hasPrefix("redis://") {
            tls = false
            rest = url.dropFirst("redis://".count)
        } else {
            throw fail("scheme must be redis://, rediss:// or unix://")
        }
        let (username, password) = Self.takeCredentials(&rest)
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !path.isEmpty {
                guard let value = Int(path), value >= 0 else { throw fail("database must be a number") }
                database = value
            }
        }
        var host = String(rest)
        var port = 6379
        if host.hasPrefix("["), let close = host.firstIndex(of: "]") {
            let after = host[host.index(after: close)...]
            let inner = String(host[host.index(after: host.startIndex)..<close])
            if after.hasPrefix(":") {
                guard let value = Int(after.dropFirst()), (1...65535).contains(value) else { throw fail("bad port") }
                port = value
            }
            host = inner
        } else if let colon = host.lastIndex(of: ":") {
            guard let value = Int(host[host.index(after: colon)...]), (1...65535).contains(value) else {
                throw fail("bad port")
            }
            port = value
            host = String(host[..<colon])
        }
        if host.isEmpty { host = "127.0.0.1" }
        self.init(address: .tcp(host: host, port: port), tls: tls, username: username, password: password, database: database)
    }

    /// `user:password@` (either part optional, percent-encoded) taken off the front of a URL's rest.
    static func takeCredentials(_ rest: inout Substring) -> (username: String?, password: String?) {
        guard let at = rest.lastIndex(of: "@") else { return (nil, nil) }
        let credentials = rest[..<at]
        rest = rest[rest.index(after: at)...]
        if let colon = credentials.firstIndex(of: ":") {
            let user = credentials[..<colon]
            return (user.isEmpty ? nil : percentDecoded(user), percentDecoded(credentials[credentials.index(after: colon)...]))
        }
        return (nil, credentials.isEmpty ? nil : percentDecoded(credentials))
    }

    static func percentDecoded(_ text: Substring) -> String {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.first {
            bytes = bytes.dropFirst()
            if byte == UInt8(ascii: "%"), bytes.count >= 2,
                let value = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(value)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Host and port or socket path; never the password.
    public var description: String {
        switch address {
        case .tcp(let host, let port): return "\(tls ? "rediss" : "redis")://\(host):\(port)/\(database)"
        case .unix(let path): return "unix://\(path)?db=\(database)"
        }
    }
}
