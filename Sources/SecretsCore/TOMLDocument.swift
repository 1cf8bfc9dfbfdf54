import CTOML
import Glibc
import TOMLKit

/// A position in a text file, 1-based.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// A problem in a config or data file, with where it is. The message names keys, never values.
public struct LocatedError: Error, CustomStringConvertible, Sendable {
    public var location: SourceLocation
    public var message: String

    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }

    public var description: String { "\(location): \(message)" }
}

/// A parsed TOML document: its values as `SecretValue`, and a way to find where a key path stands in the text.
public struct TOMLDocument: Sendable {
    public let file: String
    public let root: [String: SecretValue]
    private let locator: KeyLocator

    /// Parses `text`; a syntax error is reported with file, line, column and the parser's words. The parser's
    /// words may quote the offending text, so callers parsing secret files should use `parseQuietly`.
    public init(file: String, text: String) throws(LocatedError) {
        self.file = file
        self.locator = KeyLocator(text: text)
        try Self.checkTableHeaders(text, file: file)
        do {
            let table = try TOMLTable(string: text)
            self.root = Self.convert(table)
        } catch let error as TOMLParseError {
            let begin = error.source.begin
            throw LocatedError(
                SourceLocation(file: file, line: begin.line, column: begin.column), "TOML syntax error: \(error.description)")
        } catch {
            throw LocatedError(SourceLocation(file: file, line: 1, column: 1), "TOML syntax error")
        }
    }

    /// toml++ (under TOMLKit) aborts the process on a table header whose unquoted name holds a non-ASCII character
    /// (`[ünt]`: an assertion in its bare-key code; found by `make fuzz`). Such headers are invalid TOML anyway, so
    /// they are refused here first, with the same kind of error.
    static func checkTableHeaders(_ text: String, file: String) throws(LocatedError) {
        var inMultiline: String?  // the delimiter of a multi-line string that is open, whose lines are not headers
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let wasInside = inMultiline != nil
            for delimiter in ["\"\"\"", "\'\'\'"] where inMultiline == nil || inMultiline == delimiter {
                if occurrences(of: delimiter, in: line) % 2 == 1 {
                    inMultiline = inMultiline == nil ? delimiter : nil
                }
            }
            if wasInside { continue }
            let bytes = Array(line.utf8)
            guard let first = bytes.firstIndex(where: { $0 != 0x20 && $0 != 0x09 }), bytes[first] == UInt8(ascii: "[")
            else { continue }
            var quote: UInt8?
            var column = first
            while column < bytes.count {
                let byte = bytes[column]
                if let open = quote {
                    if byte == open { quote = nil }
                } else if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                    quote = byte
                } else if byte == UInt8(ascii: "]") || byte == UInt8(ascii: "#") {
                    if byte == UInt8(ascii: "#") { break }
                } else if byte >= 0x80 {
                    throw LocatedError(
                        SourceLocation(file: file, line: index + 1, column: column + 1),
                        "TOML syntax error: a table name outside quotes may only hold A-Z a-z 0-9 - _ (quote other names)")
                }
                column += 1
            }
        }
    }

    static func occurrences(of needle: String, in line: Substring) -> Int {
        let bytes = Array(line.utf8)
        let pattern = Array(needle.utf8)
        var count = 0
        var index = 0
        while index + pattern.count <= bytes.count {
            if Array(bytes[index..<index + pattern.count]) == pattern {
                count += 1
                index += pattern.count
            } else {
                index += 1
            }
        }
        return count
    }

    /// Like `init`, but a syntax error says only where, not what the parser quoted (secret files).
    public static func parseQuietly(file: String, text: String) throws(LocatedError) -> TOMLDocument {
        do {
            return try TOMLDocument(file: file, text: text)
        } catch {
            throw LocatedError(error.location, "TOML syntax error")
        }
    }

    /// Where the key path stands: the key's own line, else its table header, else the start of the file.
    public func location(of path: [String]) -> SourceLocation {
        var probe = path
        while !probe.isEmpty {
            if let (line, column) = locator.find(probe) {
                return SourceLocation(file: file, line: line, column: column)
            }
            probe.removeLast()
        }
        return SourceLocation(file: file, line: 1, column: 1)
    }

    static func convert(_ table: TOMLTable) -> [String: SecretValue] {
        var out: [String: SecretValue] = [:]
        for key in keys(of: table) {
            if let value = table[key] {
                out[key] = convert(value)
            }
        }
        return out
    }

    /// The keys of a table. TOMLKit 0.6's `TOMLTable.keys` (and its iterator) never free the C array and strings it
    /// gets from toml++, so every parse leaked them (found by `make fuzz`, LeakSanitizer). Here they are read from
    /// the same C call and freed. The table's pointer is TOMLKit's internal stored property, read by reflection;
    /// should that ever change, this falls back to TOMLKit's leaking `keys`.
    static func keys(of table: TOMLTable) -> [String] {
        guard let pointer = tablePointer(table) else { return table.keys }
        let count = tableSize(pointer)
        let raw = tableGetKeys(pointer)
        var keys: [String] = []
        keys.reserveCapacity(count)
        for index in 0..<count {
            keys.append(String(cString: raw[index]))
            free(UnsafeMutableRawPointer(mutating: raw[index]))
        }
        free(UnsafeMutableRawPointer(mutating: raw))
        return keys
    }

    static func tablePointer(_ table: TOMLTable) -> OpaquePointer? {
        Mirror(reflecting: table).children.first { $0.label == "tablePointer" }?.value as? OpaquePointer
    }

    /// A string value. TOMLKit's `.string` leaks the copy toml++ makes of it; read and free it here (falling back to
    /// TOMLKit when its internals are not as expected).
    static func string(of value: any TOMLValueConvertible) -> String? {
        guard let pointer = nodePointer(value) else { return value.string }
        guard let copy = nodeAsString(pointer) else { return nil }
        defer { free(UnsafeMutableRawPointer(mutating: copy)) }
        return String(cString: copy)
    }

    /// Scalars: TOMLKit's `.int`, `.double` and `.bool` leak the heap copy toml++ hands them; read and free it.
    static func scalar<T>(_ value: any TOMLValueConvertible, _ read: (OpaquePointer) -> UnsafePointer<T>?) -> T? {
        guard let pointer = nodePointer(value), let copy = read(pointer) else { return nil }
        defer { free(UnsafeMutableRawPointer(mutating: copy)) }
        return copy.pointee
    }

    static func nodePointer(_ value: any TOMLValueConvertible) -> OpaquePointer? {
        Mirror(reflecting: value.tomlValue).children.first { $0.label == "tomlValuePointer" }?.value as? OpaquePointer
    }

    /// Whether keys are read without TOMLKit's leak (tested, so a TOMLKit update that breaks it is noticed).
    public static var readsKeysWithoutLeaking: Bool {
        let value = TOMLValue(stringLiteral: "x")
        return tablePointer(TOMLTable()) != nil
            && Mirror(reflecting: value).children.contains { $0.label == "tomlValuePointer" && $0.value is OpaquePointer }
    }

    static func convert(_ value: any TOMLValueConvertible) -> SecretValue {
        switch value.type {
        case .table:
            if let table = value.table { return .table(convert(table)) }
        case .array:
            if let array = value.array { return .array(array.map { convert($0) }) }
        case .string:
            if let text = string(of: value) { return .string(text) }
        case .int:
            if let number = scalar(value, { nodeAsInt($0) }) { return .int(number) }
        case .double:
            if let number = scalar(value, { nodeAsDouble($0) }) { return .float(number) }
        case .bool:
            if let flag = scalar(value, { nodeAsBool($0) }) { return .bool(flag) }
        case .date, .time, .dateTime:
            return .datetime(value.debugDescription)
        }
        return .null
    }
}

/// Finds the line of a dotted key path in TOML text without a full parse: it follows `[table]` and `[[array]]`
/// headers and `key = ` lines (bare, quoted and dotted keys). Good enough to point at a line; never used for values.
struct KeyLocator: Sendable {
    private var entries: [(path: [String], line: Int, column: Int)] = []

    /// The path part that stands for element `index` of an array of tables (`[[files]]`); never a TOML key.
    static func element(_ index: Int) -> String { "\u{0}\(index)" }

    init(text: String) {
        var table: [String] = []
        var elements: [[String]: Int] = [:]
        var lineNumber = 0
        var inMultiline: String?
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let line = Substring(rawLine)
            if let closing = inMultiline {
                if line.contains(closing) { inMultiline = nil }
                continue
            }
            let indent = line.prefix { $0 == " " || $0 == "\t" }.count
            let body = line.dropFirst(indent)
            if body.hasPrefix("#") || body.isEmpty { continue }
            if body.hasPrefix("[") {
                let inner = body.drop { $0 == "[" }
                if let end = inner.firstIndex(of: "]") {
                    table = Self.splitKey(inner[..<end])
                    if body.hasPrefix("[[") {
                        // An element of an array of tables: its keys are found under its index.
                        let index = elements[table, default: 0]
                        elements[table] = index + 1
                        table.append(Self.element(index))
                    }
                    entries.append((table, lineNumber, indent + 1))
                }
                continue
            }
            guard let equals = Self.keyEnd(body) else { continue }
            let key = Self.splitKey(body[..<equals])
            entries.append((table + key, lineNumber, indent + 1))
            let rest = body[body.index(after: equals)...].drop { $0 == " " || $0 == "\t" }
            for delimiter in ["\"\"\"", "'''"] where rest.hasPrefix(delimiter) {
                if !rest.dropFirst(3).contains(delimiter) { inMultiline = delimiter }
            }
        }
    }

    func find(_ path: [String]) -> (Int, Int)? {
        entries.first { $0.path == path }.map { ($0.line, $0.column) }
    }

    /// The index of the `=` that ends the key, skipping quoted parts.
    private static func keyEnd(_ text: Substring) -> Substring.Index? {
        var quote: Character?
        for index in text.indices {
            let char = text[index]
            if let open = quote {
                if char == open { quote = nil }
            } else if char == "\"" || char == "'" {
                quote = char
            } else if char == "=" {
                return index
            }
        }
        return nil
    }

    private static func splitKey(_ text: Substring) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character?
        for char in text {
            if let open = quote {
                if char == open { quote = nil } else { current.append(char) }
            } else if char == "\"" || char == "'" {
                quote = char
            } else if char == "." {
                parts.append(current.trimmingWhitespace())
                current = ""
            } else {
                current.append(char)
            }
        }
        parts.append(current.trimmingWhitespace())
        return parts
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" }) else { return "" }
        guard let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" && $0 != "\r" }) else { return "" }
        return String(scalars[first...last])
    }
}
