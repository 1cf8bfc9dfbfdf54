import SecretsCore

/// Little-endian fields: integers as 8 bytes (u16 as 2), byte strings with a 4-byte length.
public struct HandoverWriter: Sendable {
    public private(set) var output: [UInt8] = []

    public init() {}

    public mutating func byte(_ value: UInt8) { output.append(value) }

    public mutating func raw(_ value: [UInt8]) { output += value }

    public mutating func u16(_ value: UInt16) {
        output.append(UInt8(truncatingIfNeeded: value))
        output.append(UInt8(truncatingIfNeeded: value >> 8))
    }

    public mutating func u64(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { output.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    public mutating func bool(_ value: Bool) { byte(value ? 1 : 0) }

    public mutating func bytes(_ value: [UInt8]) {
        let count = UInt32(truncatingIfNeeded: value.count)
        for shift in stride(from: 0, to: 32, by: 8) { output.append(UInt8(truncatingIfNeeded: count >> UInt32(shift))) }
        output += value
    }

    public mutating func string(_ value: String) { bytes(Array(value.utf8)) }

    mutating func optionalString(_ value: String?) {
        if let value {
            byte(1)
            string(value)
        } else {
            byte(0)
        }
    }
}

/// Reads what `HandoverWriter` wrote; any truncation or excess is an error, never a crash.
public struct HandoverReader: Sendable {
    let input: [UInt8]
    var position = 0

    public init(_ input: [UInt8]) { self.input = input }

    static let truncated = SecretsError(.invalidData, "handover data truncated")

    public mutating func byte() throws(SecretsError) -> UInt8 {
        guard position < input.count else { throw Self.truncated }
        defer { position += 1 }
        return input[position]
    }

    public mutating func bool() throws(SecretsError) -> Bool { try byte() == 1 }

    public mutating func raw(_ count: Int) throws(SecretsError) -> [UInt8] {
        guard input.count - position >= count else { throw Self.truncated }
        defer { position += count }
        return Array(input[position..<position + count])
    }

    /// Bytes not read yet.
    public var remaining: Int { input.count - position }

    /// Whether the input starts with `prefix` (consumed when it does).
    mutating func skip(prefix: [UInt8]) -> Bool {
        guard input.count - position >= prefix.count, Array(input[position..<position + prefix.count]) == prefix
        else { return false }
        position += prefix.count
        return true
    }

    public mutating func u16() throws(SecretsError) -> UInt16 {
        let raw = try raw(2)
        return UInt16(raw[0]) | UInt16(raw[1]) << 8
    }

    public mutating func u64() throws(SecretsError) -> UInt64 {
        let raw = try raw(8)
        var value: UInt64 = 0
        for index in 0..<8 { value |= UInt64(raw[index]) << UInt64(index * 8) }
        return value
    }

    public mutating func bytes() throws(SecretsError) -> [UInt8] {
        let header = try raw(4)
        var count = 0
        for index in 0..<4 { count |= Int(header[index]) << (index * 8) }
        return try raw(count)
    }

    public mutating func string() throws(SecretsError) -> String {
        let raw = try bytes()
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw SecretsError(.invalidData, "handover string is not UTF-8")
        }
        return text
    }

    mutating func optionalString() throws(SecretsError) -> String? {
        try byte() == 1 ? try string() : nil
    }

    public func finish() throws(SecretsError) {
        guard position == input.count else { throw SecretsError(.invalidData, "handover data has trailing bytes") }
    }
}
