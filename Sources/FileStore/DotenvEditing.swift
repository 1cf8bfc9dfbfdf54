import SecretsCore

/// `set`, `write` and `import` on a dotenv file (a flat env): the lines of keys not named stay as they were, in
/// order, comments included; named keys (any spelling: keys ignore case) are replaced or removed; new ones are added
/// at the end, `KEY=value` with line breaks as `\n`, exactly as the reader (`SecretsDocument.dotenv`) reads them.
enum DotenvEditing {
    static func updating(_ text: String, set: [(String, SecretValue)], remove: [String], replace: Bool) -> [UInt8] {
        let named = Set((remove + set.map(\.0)).map { $0.lowercased() })
        var out: [UInt8] = []
        if !replace {
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if lines.last?.isEmpty == true { lines.removeLast() }
            for line in lines {
                let trimmed = line.drop { $0 == " " || $0 == "\t" }
                if !trimmed.hasPrefix("#"), let equals = line.firstIndex(of: "="),
                    named.contains(String(line[..<equals]).lowercased())
                {
                    continue
                }
                out.append(contentsOf: line.utf8)
                out.append(UInt8(ascii: "\n"))
            }
        }
        for (key, value) in set { appendLine(key, value, to: &out) }
        return out
    }

    /// `KEY=value` and a line break, the value's bytes with each line break written `\n` (as sops writes dotenv).
    static func appendLine(_ key: String, _ value: SecretValue, to out: inout [UInt8]) {
        out.append(contentsOf: key.utf8)
        out.append(UInt8(ascii: "="))
        value.fileBytes().withUnsafeBytes { bytes in
            for byte in bytes {
                if byte == UInt8(ascii: "\n") { out.append(contentsOf: "\\n".utf8) } else { out.append(byte) }
            }
        }
        out.append(UInt8(ascii: "\n"))
    }
}
