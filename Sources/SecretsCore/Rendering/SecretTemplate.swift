/// A `[[files]]` template: literal text with `{{ expression }}` holes, parsed once when the config loads.
///
/// ```
/// postgres://{{url(DB_USER)}}:{{url(DB_PASS)}}@db.internal/app
/// {{pem(tls/production/CERT, tls/production/CHAIN, tls/production/KEY)}}
/// ```
///
/// An expression is a key of the file's own store/env (`DB_PASS`), a key of another one (`vault/production/DB_PASS`),
/// a string literal (`"{{"`), or a helper applied to expressions (`url(DB_PASS)`). `{{! ... }}` is a comment.
/// Every key a template uses is known before any is read, so an open reads them from one view per env, a missing
/// key fails the open (never an empty hole), and the audit line names them all.
public struct SecretTemplate: Sendable {
    /// A key a template uses: `store` and `env` nil for the file's own.
    public struct Reference: Hashable, Sendable, CustomStringConvertible {
        public var top: String?
        public var env: String?
        public var key: String

        public var description: String {
            guard let top, let env else { return key }
            return "\(top)/\(env)/\(key)"
        }
    }

    /// The helpers a hole may call.
    public enum Helper: String, CaseIterable, Sendable {
        /// Percent-encodes all but `A-Z a-z 0-9 - . _ ~` (a user, password, path segment or query value of a URL).
        case url
        /// The value as JSON: text quoted and escaped, a number or boolean as itself.
        case json
        /// Standard base64 with padding.
        case base64
        /// The bytes standard or URL-safe base64 text stands for (padding and line breaks optional).
        case base64decode
        /// PEM blocks joined: each trimmed, one per line, ending with a newline; any argument that is not PEM fails.
        case pem
        /// Leading and trailing whitespace removed.
        case trim
        /// A field of a `.pgpass` line: `\` and `:` escaped with a backslash.
        case pgpass
        /// One word for a POSIX shell: single-quoted.
        case sh
    }

    indirect enum Expression: Sendable {
        case reference(Reference)
        case literal([UInt8])
        case call(Helper, [Expression], line: Int, column: Int)
    }

    enum Piece: Sendable {
        case text([UInt8])
        case hole(Expression)
    }

    /// A problem in the template's text, at its own line and column (1-based).
    public struct SyntaxError: Error, Sendable, CustomStringConvertible {
        public var line: Int
        public var column: Int
        public var message: String
        public var description: String { "template line \(line), column \(column): \(message)" }
    }

    let pieces: [Piece]
    /// Every key the template uses, each once, in the order they first appear, with where.
    public let references: [(reference: Reference, line: Int, column: Int)]

    public init(parsing text: String) throws(SyntaxError) {
        var parser = Parser(Array(text.utf8))
        pieces = try parser.pieces()
        var seen: Set<Reference> = []
        references = parser.references.filter { seen.insert($0.reference).inserted }
    }

    /// The template's bytes: each hole's value from `lookup` (which throws for a key it cannot give).
    public func render(_ lookup: (Reference) throws(SecretsError) -> SecretValue) throws(SecretsError) -> [UInt8] {
        var out: [UInt8] = []
        do {
            for piece in pieces {
                switch piece {
                case .text(let bytes): out += bytes
                case .hole(let expression):
                    var bytes = try Self.evaluate(expression, lookup).bytes
                    out += bytes
                    wipe(&bytes)
                }
            }
        } catch {
            wipe(&out)
            throw error
        }
        return out
    }

    /// A hole's value: the value a key holds, or a helper's bytes (with what they came from, for messages).
    static func evaluate(
        _ expression: Expression, _ lookup: (Reference) throws(SecretsError) -> SecretValue
    ) throws(SecretsError) -> (bytes: [UInt8], value: SecretValue?, origin: String) {
        switch expression {
        case .literal(let bytes):
            return (bytes, nil, "a string")
        case .reference(let reference):
            let value = try lookup(reference)
            return (value.fileBytes().copyBytes(), value, "'\(reference)'")
        case .call(let helper, let arguments, _, _):
            var values: [(bytes: [UInt8], value: SecretValue?, origin: String)] = []
            defer { for index in values.indices { wipe(&values[index].bytes) } }
            for argument in arguments { values.append(try evaluate(argument, lookup)) }
            return (try apply(helper, values), nil, "\(helper.rawValue)(...)")
        }
    }

    static func apply(
        _ helper: Helper, _ arguments: [(bytes: [UInt8], value: SecretValue?, origin: String)]
    ) throws(SecretsError) -> [UInt8] {
        switch helper {
        case .url:
            var out: [UInt8] = []
            for byte in arguments[0].bytes {
                if isUnreserved(byte) { out.append(byte) } else { out += [UInt8(ascii: "%")] + hexPair(byte) }
            }
            return out
        case .json:
            var out: [UInt8] = []
            switch arguments[0].value {
            case .string(let text)?, .datetime(let text)?: JSONText.appendString(text, to: &out)
            case .bytes?, nil:
                guard let text = String(validating: arguments[0].bytes, as: UTF8.self) else {
                    throw SecretsError(.invalidData, "json: \(arguments[0].origin) is not UTF-8 text")
                }
                JSONText.appendString(text, to: &out)
            case let value?: value.appendJSON(to: &out)
            }
            return out
        case .base64:
            return Base64Text.encode(arguments[0].bytes)
        case .base64decode:
            guard let bytes = Base64Text.decode(arguments[0].bytes) else {
                throw SecretsError(.invalidData, "base64decode: \(arguments[0].origin) is not base64")
            }
            return bytes
        case .pem:
            var out: [UInt8] = []
            for argument in arguments {
                let block = trimmed(argument.bytes)
                guard startsWith(block, "-----BEGIN "), endsWith(block, "-----"), contains(block, "-----END ") else {
                    wipe(&out)
                    throw SecretsError(.invalidData, "pem: \(argument.origin) is not a PEM block")
                }
                out += block
                out.append(0x0A)
            }
            return out
        case .trim:
            return trimmed(arguments[0].bytes)
        case .pgpass:
            var out: [UInt8] = []
            for byte in arguments[0].bytes {
                if byte == UInt8(ascii: "\\") || byte == UInt8(ascii: ":") { out.append(UInt8(ascii: "\\")) }
                out.append(byte)
            }
            return out
        case .sh:
            var out: [UInt8] = [UInt8(ascii: "'")]
            for byte in arguments[0].bytes {
                if byte == UInt8(ascii: "'") { out += Array("'\\''".utf8) } else { out.append(byte) }
            }
            out.append(UInt8(ascii: "'"))
            return out
        }
    }

    /// How many arguments each helper takes (`pem`: one or more).
    static func accepts(_ helper: Helper, count: Int) -> Bool {
        helper == .pem ? count >= 1 : count == 1
    }

    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    static func hexPair(_ byte: UInt8) -> [UInt8] {
        let digits = Array("0123456789ABCDEF".utf8)
        return [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]]
    }

    static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || (0x09...0x0D).contains(byte) }

    static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) })
        else { return [] }
        return Array(bytes[first...last])
    }

    static func startsWith(_ bytes: [UInt8], _ prefix: String) -> Bool { bytes.starts(with: prefix.utf8) }
    static func endsWith(_ bytes: [UInt8], _ suffix: String) -> Bool { bytes.reversed().starts(with: suffix.utf8.reversed()) }
    static func contains(_ bytes: [UInt8], _ needle: String) -> Bool {
        let pattern = Array(needle.utf8)
        guard bytes.count >= pattern.count else { return false }
        return (0...(bytes.count - pattern.count)).contains { bytes[$0..<($0 + pattern.count)].elementsEqual(pattern) }
    }
}

extension SecretTemplate {
    /// The template's grammar, over its UTF-8 bytes (columns count characters):
    ///
    ///     template   = *( text / "{{" ( "!" comment / expression ) "}}" )
    ///     expression = name / string / helper "(" expression *( "," expression ) ")"
    ///     name       = key / store "/" env "/" key      (letters, digits, "_", "-", ".")
    ///     string     = '"' *( char / '\"' / '\\' / '\n' ) '"'
    struct Parser {
        let bytes: [UInt8]
        var index = 0
        var line = 1
        var column = 1
        var references: [(reference: Reference, line: Int, column: Int)] = []

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        func error(_ message: String, line: Int? = nil, column: Int? = nil) -> SyntaxError {
            SyntaxError(line: line ?? self.line, column: column ?? self.column, message: message)
        }

        var atEnd: Bool { index >= bytes.count }

        func peek(_ text: String) -> Bool { bytes[index...].starts(with: text.utf8) }

        mutating func advance() {
            let byte = bytes[index]
            index += 1
            if byte == 0x0A {
                line += 1
                column = 1
            } else if byte & 0xC0 != 0x80 {
                column += 1
            }
        }

        mutating func advance(over text: String) { for _ in text.utf8 { advance() } }

        mutating func skipSpaces() { while !atEnd, SecretTemplate.isSpace(bytes[index]) { advance() } }

        mutating func pieces() throws(SyntaxError) -> [Piece] {
            var pieces: [Piece] = []
            var text: [UInt8] = []
            while !atEnd {
                if peek("}}") { throw error("'}}' without an opening '{{' (write {{\"}}\"}} for the text)") }
                guard peek("{{") else {
                    text.append(bytes[index])
                    advance()
                    continue
                }
                let open = (line, column)
                advance(over: "{{")
                if !atEnd, bytes[index] == UInt8(ascii: "!") {
                    while !atEnd, !peek("}}") { advance() }
                    guard !atEnd else { throw error("a comment opened here is never closed with '}}'", line: open.0, column: open.1) }
                    advance(over: "}}")
                    continue
                }
                if !atEnd, bytes[index] == UInt8(ascii: "{") || bytes[index] == UInt8(ascii: "&") {
                    throw error("values are never HTML-escaped here: write {{NAME}}, not {{{NAME}}} or {{&NAME}}")
                }
                skipSpaces()
                let expression = try self.expression()
                skipSpaces()
                guard !atEnd else { throw error("'{{' opened here is never closed with '}}'", line: open.0, column: open.1) }
                guard peek("}}") else { throw error("expected '}}' here") }
                advance(over: "}}")
                if !text.isEmpty { pieces.append(.text(text)) }
                text = []
                pieces.append(.hole(expression))
            }
            if !text.isEmpty { pieces.append(.text(text)) }
            return pieces
        }

        static func isNameByte(_ byte: UInt8) -> Bool {
            SecretTemplate.isUnreserved(byte) && byte != UInt8(ascii: "~")
        }

        mutating func expression() throws(SyntaxError) -> Expression {
            guard !atEnd else { throw error("expected a key, a \"string\" or a helper here") }
            let start = (line, column)
            if bytes[index] == UInt8(ascii: "\"") { return .literal(try string()) }
            var name: [UInt8] = []
            while !atEnd, Self.isNameByte(bytes[index]) || bytes[index] == UInt8(ascii: "/") {
                name.append(bytes[index])
                advance()
            }
            guard !name.isEmpty else {
                if peek("}}") { throw error("an empty '{{}}': name a key") }
                throw error("'\(String(decoding: [bytes[index]], as: UTF8.self))' cannot start a name: a key, a \"string\" or a helper")
            }
            let text = String(decoding: name, as: UTF8.self)
            skipSpaces()
            if !atEnd, bytes[index] == UInt8(ascii: "(") {
                guard let helper = Helper(rawValue: text) else {
                    throw error(
                        "no helper '\(text)' (helpers: \(Helper.allCases.map(\.rawValue).joined(separator: ", ")))",
                        line: start.0, column: start.1)
                }
                advance()
                var arguments: [Expression] = []
                while true {
                    skipSpaces()
                    arguments.append(try expression())
                    skipSpaces()
                    guard !atEnd else { throw error("'\(text)(' is never closed with ')'", line: start.0, column: start.1) }
                    if bytes[index] == UInt8(ascii: ",") {
                        advance()
                        continue
                    }
                    guard bytes[index] == UInt8(ascii: ")") else { throw error("expected ',' or ')' here") }
                    advance()
                    break
                }
                guard SecretTemplate.accepts(helper, count: arguments.count) else {
                    throw error(
                        "\(helper.rawValue) takes \(helper == .pem ? "one or more arguments" : "one argument"), not \(arguments.count)",
                        line: start.0, column: start.1)
                }
                return .call(helper, arguments, line: start.0, column: start.1)
            }
            let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            let reference: Reference
            switch parts.count {
            case 1:
                reference = Reference(top: nil, env: nil, key: text)
            case 3 where parts.allSatisfy({ !$0.isEmpty }):
                // Env names are lower-case everywhere (as the mount shows them): `Production` is `production`.
                reference = Reference(top: parts[0], env: parts[1].lowercased(), key: parts[2])
            default:
                throw error(
                    "'\(text)': name a key of this env (DB_PASS) or of another one as <store or scope>/<env>/<key>",
                    line: start.0, column: start.1)
            }
            references.append((reference, start.0, start.1))
            return .reference(reference)
        }

        mutating func string() throws(SyntaxError) -> [UInt8] {
            let start = (line, column)
            advance()
            var out: [UInt8] = []
            while !atEnd {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    advance()
                    return out
                }
                if byte == 0x0A { break }
                if byte == UInt8(ascii: "\\") {
                    advance()
                    guard !atEnd else { break }
                    switch bytes[index] {
                    case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
                    case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
                    case UInt8(ascii: "n"): out.append(0x0A)
                    default: throw error("unknown escape in a string (known: \\\" \\\\ \\n)")
                    }
                    advance()
                    continue
                }
                out.append(byte)
                advance()
            }
            throw error("a string opened here is never closed with '\"' on its line", line: start.0, column: start.1)
        }
    }
}

/// Standard base64 (RFC 4648 section 4) with padding; decoding also takes the URL-safe alphabet, missing padding and
/// line breaks.
enum Base64Text {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let count = min(3, bytes.count - index)
            var group: UInt32 = 0
            for offset in 0..<3 { group = group << 8 | UInt32(offset < count ? bytes[index + offset] : 0) }
            for slot in 0..<4 {
                out.append(slot <= count ? alphabet[Int((group >> UInt32(18 - 6 * slot)) & 0x3F)] : UInt8(ascii: "="))
            }
            index += 3
        }
        return out
    }

    static func sextet(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return UInt32(byte - UInt8(ascii: "A"))
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return UInt32(byte - UInt8(ascii: "a")) + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(byte - UInt8(ascii: "0")) + 52
        case UInt8(ascii: "+"), UInt8(ascii: "-"): return 62
        case UInt8(ascii: "/"), UInt8(ascii: "_"): return 63
        default: return nil
        }
    }

    /// Nil: not base64 (a stray character, padding before the end, or a length no encoding has).
    static func decode(_ text: [UInt8]) -> [UInt8]? {
        var symbols: [UInt32] = []
        var padding = 0
        for byte in text where !(byte == 0x0A || byte == 0x0D) {
            if byte == UInt8(ascii: "=") {
                padding += 1
                continue
            }
            guard padding == 0, let value = sextet(byte) else { return nil }
            symbols.append(value)
        }
        guard padding <= 2, symbols.count % 4 != 1, padding == 0 || (symbols.count + padding) % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var index = 0
        while index < symbols.count {
            let count = min(4, symbols.count - index)
            var group: UInt32 = 0
            for offset in 0..<4 { group = group << 6 | (offset < count ? symbols[index + offset] : 0) }
            for slot in 0..<(count - 1) { out.append(UInt8((group >> UInt32(16 - 8 * slot)) & 0xFF)) }
            index += 4
        }
        return out
    }
}
