/// A small strict JSON parser producing `SecretValue`, keeping integers apart from floats.
public struct JSONParser {
    private let bytes: [UInt8]
    private var index = 0
    public private(set) var line = 1
    private var depth = 0

    public struct Failure: Error {}

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func parseDocument() throws(Failure) -> SecretValue {
        let value = try parseValue()
        skipSpace()
        guard index == bytes.count else { throw Failure() }
        return value
    }

    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\n"): line += 1
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"): break
            default: return
            }
            index += 1
        }
    }

    private mutating func expect(_ literal: StaticString) throws(Failure) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw Failure() }
        let matches = literal.withUTF8Buffer { expected in
            for offset in 0..<count where bytes[index + offset] != expected[offset] { return false }
            return true
        }
        guard matches else { throw Failure() }
        index += count
    }

    private mutating func parseValue() throws(Failure) -> SecretValue {
        skipSpace()
        guard index < bytes.count else { throw Failure() }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            depth += 1
            guard depth < 512 else { throw Failure() }
            defer { depth -= 1 }
            index += 1
            var table: [String: SecretValue] = [:]
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .table(table)
            }
            while true {
                skipSpace()
                let key = try parseString()
                skipSpace()
                try expect(":")
                table[key] = try parseValue()
                skipSpace()
                guard index < bytes.count else { throw Failure() }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect("}")
                return .table(table)
            }
        case UInt8(ascii: "["):
            depth += 1
            guard depth < 512 else { throw Failure() }
            defer { depth -= 1 }
            index += 1
            var items: [SecretValue] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            while true {
                items.append(try parseValue())
                skipSpace()
                guard index < bytes.count else { throw Failure() }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect("]")
                return .array(items)
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default:
            return try parseNumber()
        }
    }

    private mutating func parseNumber() throws(Failure) -> SecretValue {
        let start = index
        var isFloat = false
        while index < bytes.count {
            let char = bytes[index]
            if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(char) || char == UInt8(ascii: "-")
                || char == UInt8(ascii: "+")
            {
                index += 1
            } else if char == UInt8(ascii: ".") || char == UInt8(ascii: "e") || char == UInt8(ascii: "E") {
                isFloat = true
                index += 1
            } else {
                break
            }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        guard !text.isEmpty else { throw Failure() }
        if !isFloat, let number = Int64(text) { return .int(number) }
        guard let number = Double(text) else { throw Failure() }
        return .float(number)
    }

    private mutating func parseString() throws(Failure) -> String {
        try expect("\"")
        // Most strings have no escapes: find the closing quote and decode the run in one go.
        let start = index
        while index < bytes.count {
            let char = bytes[index]
            if char == UInt8(ascii: "\"") {
                guard let text = String(validating: bytes[start..<index], as: UTF8.self) else { throw Failure() }
                index += 1
                return text
            }
            if char == UInt8(ascii: "\\") || char < 0x20 { break }
            index += 1
        }
        var out = Array(bytes[start..<index])
        while index < bytes.count {
            let char = bytes[index]
            index += 1
            switch char {
            case UInt8(ascii: "\""):
                guard let text = String(validating: out, as: UTF8.self) else { throw Failure() }
                return text
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw Failure() }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "/"): out.append(UInt8(ascii: "/"))
                case UInt8(ascii: "b"): out.append(8)
                case UInt8(ascii: "f"): out.append(12)
                case UInt8(ascii: "n"): out.append(10)
                case UInt8(ascii: "r"): out.append(13)
                case UInt8(ascii: "t"): out.append(9)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        try expect("\\u")
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw Failure() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw Failure() }
                    out.append(contentsOf: Array(String(unicode).utf8))
                default: throw Failure()
                }
            default:
                if char < 0x20 { throw Failure() }
                out.append(char)
            }
        }
        throw Failure()
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard index + 4 <= bytes.count,
            let value = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16)
        else { throw Failure() }
        index += 4
        return value
    }
}

extension SecretValue {
    /// Parses JSON text (strict; integers stay integers); nil when it is not valid JSON.
    public static func parseJSON<C: Collection>(_ text: C) -> SecretValue? where C.Element == UInt8 {
        var parser = JSONParser(Array(text))
        return try? parser.parseDocument()
    }
}
