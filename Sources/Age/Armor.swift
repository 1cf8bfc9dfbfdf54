/// age's ASCII armor: the binary file as padded standard base64 in 64-column lines between
/// `-----BEGIN AGE ENCRYPTED FILE-----` and `-----END AGE ENCRYPTED FILE-----` (a strict subset of PEM).
/// Whitespace around the armor is ignored and lines may end in CRLF; everything else is parsed strictly.
public enum AgeArmor {
    static let beginLine = Array("-----BEGIN AGE ENCRYPTED FILE-----".utf8)
    static let endLine = Array("-----END AGE ENCRYPTED FILE-----".utf8)
    static let columns = 64

    /// Whether `bytes`, after leading whitespace, start with the armor's first line.
    public static func isArmored(_ bytes: [UInt8]) -> Bool {
        let start = bytes.firstIndex { !isSpace($0) } ?? bytes.endIndex
        return bytes[start...].starts(with: beginLine)
    }

    public static func encode(_ file: [UInt8]) -> [UInt8] {
        var out = beginLine + [UInt8(ascii: "\n")]
        var index = 0
        while index < file.count {
            let end = min(index + columns / 4 * 3, file.count)
            out += Array(Base64.encodePadded(Array(file[index..<end])).utf8) + [UInt8(ascii: "\n")]
            index = end
        }
        return out + endLine + [UInt8(ascii: "\n")]
    }

    public static func decode(_ armored: [UInt8]) throws(AgeError) -> [UInt8] {
        guard let first = armored.firstIndex(where: { !isSpace($0) }),
            let last = armored.lastIndex(where: { !isSpace($0) })
        else { throw AgeError(.malformed, "empty armor") }
        var lines = armored[first...last].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            .map { line in line.last == UInt8(ascii: "\r") ? Array(line.dropLast()) : Array(line) }
        guard lines.count >= 2, lines.removeFirst() == beginLine, lines.removeLast() == endLine else {
            throw AgeError(.malformed, "armor must start with \(String(decoding: beginLine, as: UTF8.self)) and end with \(String(decoding: endLine, as: UTF8.self))")
        }
        var out: [UInt8] = []
        for (number, line) in lines.enumerated() {
            let isLast = number == lines.count - 1
            guard isLast ? (1...columns).contains(line.count) && line.count % 4 == 0 : line.count == columns else {
                throw AgeError(.malformed, "armor line \(number + 2) has \(line.count) columns")
            }
            var body = line[...]
            var padding = 0
            while isLast, padding < 2, body.last == UInt8(ascii: "=") {
                body = body.dropLast()
                padding += 1
            }
            // The padding must be exactly what the length needs; base64 characters only, canonical.
            guard let decoded = Base64.decode(body), decoded.count == line.count / 4 * 3 - padding else {
                throw AgeError(.malformed, "armor line \(number + 2) is not canonical base64")
            }
            out += decoded
        }
        return out
    }

    static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
            || byte == UInt8(ascii: "\r")
    }
}
