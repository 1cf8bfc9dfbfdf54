/// A RESP2 reply.
public indirect enum RESPValue: Sendable, Equatable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8]?)
    case array([RESPValue]?)

    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): return bytes
        case .simple(let text): return Array(text.utf8)
        default: return nil
        }
    }

    public var text: String? { bytes.flatMap { String(validating: $0, as: UTF8.self) } }
}

/// Why talking to Redis failed. Messages name the endpoint and the problem, never values.
public struct RedisError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case connection, timeout, protocolViolation, server, authentication, tls
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// An incremental, defensive RESP2 parser: a malformed or oversized reply is an error, never a crash.
public struct RESPParser: Sendable {
    public var maxBulk = 64 << 20
    public var maxElements = 1 << 20
    public var maxDepth = 8
    public var maxLine = 64 << 10

    public init() {}

    /// Parses one reply from `buffer[start...]`; nil when more bytes are needed. Returns the reply and the index
    /// just after it.
    public func parse(_ buffer: [UInt8], from start: Int) throws(RedisError) -> (RESPValue, Int)? {
        try parse(buffer, at: start, depth: 0)
    }

    private func parse(_ buffer: [UInt8], at start: Int, depth: Int) throws(RedisError) -> (RESPValue, Int)? {
        guard start < buffer.count else { return nil }
        guard depth <= maxDepth else { throw RedisError(.protocolViolation, "reply nested too deeply") }
        guard let (line, next) = try readLine(buffer, from: start + 1) else { return nil }
        switch buffer[start] {
        case UInt8(ascii: "+"):
            return (.simple(String(decoding: line, as: UTF8.self)), next)
        case UInt8(ascii: "-"):
            return (.error(String(decoding: line, as: UTF8.self)), next)
        case UInt8(ascii: ":"):
            return (.integer(try number(line)), next)
        case UInt8(ascii: "$"):
            let length = try number(line)
            if length == -1 { return (.bulk(nil), next) }
            guard length >= 0, length <= Int64(maxBulk) else {
                throw RedisError(.protocolViolation, "bulk reply of \(length) bytes is out of bounds")
            }
            let end = next + Int(length)
            guard end + 2 <= buffer.count else { return nil }
            guard buffer[end] == UInt8(ascii: "\r"), buffer[end + 1] == UInt8(ascii: "\n") else {
                throw RedisError(.protocolViolation, "bulk reply not terminated by CRLF")
            }
            return (.bulk(Array(buffer[next..<end])), end + 2)
        case UInt8(ascii: "*"):
            let count = try number(line)
            if count == -1 { return (.array(nil), next) }
            guard count >= 0, count <= Int64(maxElements) else {
                throw RedisError(.protocolViolation, "array reply of \(count) elements is out of bounds")
            }
            var items: [RESPValue] = []
            items.reserveCapacity(Int(min(count, 1024)))
            var index = next
            for _ in 0..<count {
                guard let (item, after) = try parse(buffer, at: index, depth: depth + 1) else { return nil }
                items.append(item)
                index = after
            }
            return (.array(items), index)
        default:
            throw RedisError(.protocolViolation, "unknown reply type byte \(buffer[start])")
        }
    }

    private func readLine(_ buffer: [UInt8], from start: Int) throws(RedisError) -> (ArraySlice<UInt8>, Int)? {
        var index = start
        while index + 1 < buffer.count {
            if buffer[index] == UInt8(ascii: "\r") {
                guard buffer[index + 1] == UInt8(ascii: "\n") else {
                    throw RedisError(.protocolViolation, "reply line has CR without LF")
                }
                return (buffer[start..<index], index + 2)
            }
            if index - start > maxLine { throw RedisError(.protocolViolation, "reply line too long") }
            index += 1
        }
        if buffer.count - start > maxLine { throw RedisError(.protocolViolation, "reply line too long") }
        return nil
    }

    private func number(_ line: ArraySlice<UInt8>) throws(RedisError) -> Int64 {
        guard !line.isEmpty, line.count <= 20, let value = Int64(String(decoding: line, as: UTF8.self)) else {
            throw RedisError(.protocolViolation, "malformed number in reply")
        }
        return value
    }

    /// Encodes a command as a RESP array of bulk strings.
    public static func encode(_ arguments: [[UInt8]]) -> [UInt8] {
        var out = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            out += Array("$\(argument.count)\r\n".utf8)
            out += argument
            out += [13, 10]
        }
        return out
    }
}
