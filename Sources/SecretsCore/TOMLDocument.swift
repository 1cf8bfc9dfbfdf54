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
        for key in table.keys {
            if let value = table[key] {
                out[key] = convert(value)
            }
        }
        return out
    }

    static func convert(_ value: any TOMLValueConvertible) -> SecretValue {
        switch value.type {
        case .table:
            if let table = value.table { return .table(convert(table)) }
        case .array:
            if let array = value.array { return .array(array.map { convert($0) }) }
        case .string:
            if let text = value.string { return .string(text) }
        case .int:
            if let number = value.int { return .int(Int64(number)) }
        case .double:
            if let number = value.double { return .float(number) }
        case .bool:
            if let flag = value.bool { return .bool(flag) }
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

    init(text: String) {
        var table: [String] = []
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
