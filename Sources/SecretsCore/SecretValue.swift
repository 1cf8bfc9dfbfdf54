/// A value as a store holds it, before it becomes the bytes of a file.
public indirect enum SecretValue: Sendable, Equatable, CustomStringConvertible {
    case string(String)
    case int(Int64)
    case float(Double)
    case bool(Bool)
    case null
    case array([SecretValue])
    case table([String: SecretValue])
    /// A TOML or YAML date/time, kept as its text.
    case datetime(String)
    /// Bytes that are not UTF-8 text (a Redis field can hold any bytes): served exactly as stored.
    case bytes([UInt8])

    /// The bytes a reader of the file gets: a string (or a date, as written) is its exact UTF-8 bytes; anything else is compact JSON text
    /// with object keys sorted (integers without a decimal point, floats in their shortest form).
    public func fileBytes() -> SecretBytes {
        switch self {
        case .string(let text), .datetime(let text):
            return SecretBytes(string: text)
        case .bytes(let raw):
            return SecretBytes(raw)
        default:
            var out: [UInt8] = []
            appendJSON(to: &out)
            defer { wipe(&out) }
            return SecretBytes(out)
        }
    }

    /// Compact JSON text of this value (a string becomes a quoted JSON string).
    public func jsonText() -> String {
        var out: [UInt8] = []
        appendJSON(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends compact JSON text of this value to `out` (a buffer the caller wipes: no String of it is made).
    public func appendJSON(to out: inout [UInt8]) {
        switch self {
        case .string(let text), .datetime(let text):
            JSONText.appendString(text, to: &out)
        case .bytes(let raw):
            // JSON carries text only: inside a structure, invalid sequences become U+FFFD.
            JSONText.appendString(String(decoding: raw, as: UTF8.self), to: &out)
        case .int(let number):
            out.append(contentsOf: String(number).utf8)
        case .float(let number):
            out.append(contentsOf: Self.formatFloat(number).utf8)
        case .bool(let flag):
            out.append(contentsOf: (flag ? "true" : "false").utf8)
        case .null:
            out.append(contentsOf: "null".utf8)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                item.appendJSON(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .table(let fields):
            out.append(UInt8(ascii: "{"))
            for (index, key) in fields.keys.sorted().enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                JSONText.appendString(key, to: &out)
                out.append(UInt8(ascii: ":"))
                fields[key]?.appendJSON(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Shortest round-tripping form (Swift's, like Python's repr: `1.5`, `2.0`, `1e-05`); JSON has no NaN or
    /// infinity, so those become null.
    static func formatFloat(_ number: Double) -> String {
        number.isFinite ? String(number) : "null"
    }

    /// Never the value itself: only its kind, so that a value printed by accident leaks nothing.
    public var description: String {
        switch self {
        case .string: return "<redacted string>"
        case .int: return "<redacted int>"
        case .float: return "<redacted float>"
        case .bool: return "<redacted bool>"
        case .null: return "<null>"
        case .array: return "<redacted array>"
        case .table: return "<redacted table>"
        case .datetime: return "<redacted datetime>"
        case .bytes: return "<redacted bytes>"
        }
    }
}
