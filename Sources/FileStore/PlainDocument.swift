import SecretsCore

/// A decrypted SOPS document in its own format, written straight into a byte buffer the caller wipes: no String of
/// the whole document is ever made (only of single values, as `SecretValue` holds them).
///
/// The text is what `secretsfs edit` shows: nested tables with their keys sorted; YAML strings double-quoted (so
/// `true` stays a string) or, when multi-line, literal blocks.
enum PlainDocument {
    static func render(_ entries: [(String, SecretValue)], format: Sops.Format) -> [UInt8] {
        var out: [UInt8] = []
        switch format {
        case .yaml:
            appendMapping(entries, indent: 0, to: &out)
            if entries.isEmpty { out.append(contentsOf: "{}\n".utf8) }
        case .json:
            out.append(contentsOf: "{\n".utf8)
            for (index, (name, value)) in entries.enumerated() {
                if index > 0 { out.append(contentsOf: ",\n".utf8) }
                out.append(UInt8(ascii: "\t"))
                JSONText.appendString(name, to: &out)
                out.append(contentsOf: ": ".utf8)
                value.appendJSON(to: &out)
            }
            out.append(contentsOf: "\n}\n".utf8)
            escapeYAMLBreaks(&out)
        case .dotenv:
            for (name, value) in entries { DotenvEditing.appendLine(name, value, to: &out) }
        case .ini:
            for (index, (section, value)) in entries.enumerated() {
                if index > 0 { out.append(UInt8(ascii: "\n")) }
                guard case .table(let fields) = value else { continue }
                out.append(contentsOf: "[\(section)]\n".utf8)
                for key in fields.keys.sorted() {
                    out.append(contentsOf: "\(key) = ".utf8)
                    fields[key]?.fileBytes().withUnsafeBytes { out.append(contentsOf: $0) }
                    out.append(UInt8(ascii: "\n"))
                }
            }
        }
        return out
    }

    /// JSON text with U+0085, U+2028, U+2029 and U+FEFF as `\u` escapes: JSON allows them raw, but the edited copy
    /// is read back by a YAML parser, which takes the first three for line breaks. They can only occur inside strings.
    static func escapeYAMLBreaks(_ json: inout [UInt8]) {
        var out: [UInt8] = []
        out.reserveCapacity(json.count)
        var index = 0
        while index < json.count {
            let rest = json.count - index
            if rest >= 2, json[index] == 0xC2, json[index + 1] == 0x85 {
                out.append(contentsOf: "\\u0085".utf8)
                index += 2
            } else if rest >= 3, json[index] == 0xE2, json[index + 1] == 0x80, json[index + 2] == 0xA8 || json[index + 2] == 0xA9 {
                out.append(contentsOf: (json[index + 2] == 0xA8 ? "\\u2028" : "\\u2029").utf8)
                index += 3
            } else if rest >= 3, json[index] == 0xEF, json[index + 1] == 0xBB, json[index + 2] == 0xBF {
                out.append(contentsOf: "\\uFEFF".utf8)
                index += 3
            } else {
                out.append(json[index])
                index += 1
            }
        }
        wipe(&json)
        json = out
    }

    // MARK: YAML

    static func appendMapping(_ entries: [(String, SecretValue)], indent: Int, to out: inout [UInt8]) {
        for (key, value) in entries {
            pad(indent, &out)
            appendKey(key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendNode(value, indent: indent, to: &out)
        }
    }

    /// After `key:` or `-`: a nested block on the next lines, or a space and a scalar, then the line's end.
    static func appendNode(_ value: SecretValue, indent: Int, inSequence: Bool = false, to out: inout [UInt8]) {
        switch value {
        case .table(let fields) where !fields.isEmpty:
            out.append(UInt8(ascii: "\n"))
            appendMapping(fields.keys.sorted().map { ($0, fields[$0] ?? .null) }, indent: indent + 4, to: &out)
        case .array(let items) where !items.isEmpty:
            out.append(UInt8(ascii: "\n"))
            for item in items {
                pad(indent + 4, &out)
                out.append(UInt8(ascii: "-"))
                appendNode(item, indent: indent + 4, inSequence: true, to: &out)
            }
        case .table:
            out.append(contentsOf: " {}\n".utf8)
        case .array:
            out.append(contentsOf: " []\n".utf8)
        case .string(let text) where !inSequence && literalFits(text):
            appendLiteral(text, indent: indent, to: &out)
        case .string(let text):
            out.append(UInt8(ascii: " "))
            appendQuoted(text, to: &out)
            out.append(UInt8(ascii: "\n"))
        case .bytes(let raw):
            out.append(UInt8(ascii: " "))
            appendQuoted(String(decoding: raw, as: UTF8.self), to: &out)
            out.append(UInt8(ascii: "\n"))
        case .int(let number):
            out.append(contentsOf: " \(number)\n".utf8)
        case .float(let number):
            let text = number.isNaN ? ".nan" : number.isInfinite ? (number < 0 ? "-.inf" : ".inf") : Sops.plainFloat(number)
            out.append(contentsOf: " \(text)\n".utf8)
        case .bool(let flag):
            out.append(contentsOf: (flag ? " true\n" : " false\n").utf8)
        case .null:
            out.append(contentsOf: " null\n".utf8)
        case .datetime(let text):
            out.append(contentsOf: " \(text)\n".utf8)
        }
    }

    /// A multi-line string whose every character a literal block holds as itself.
    static func literalFits(_ text: String) -> Bool {
        text.contains("\n") && text.contains { $0 != "\n" } && text.unicodeScalars.allSatisfy { scalar in
            scalar == "\n" || scalar == "\t" || (scalar.value >= 0x20 && scalar.value != 0x7F && !special(scalar))
        }
    }

    /// Characters YAML reads as line breaks or a byte order mark, and C1 controls: always escaped.
    static func special(_ scalar: Unicode.Scalar) -> Bool {
        (0x80...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 || scalar.value == 0xFEFF
    }

    /// `|4-`, `|4` or `|4+` (the indentation given, so a first line that starts with spaces stays exact; the chomping
    /// by how many line breaks end the text), then every line indented.
    static func appendLiteral(_ text: String, indent: Int, to out: inout [UInt8]) {
        let trailing = text.reversed().prefix { $0 == "\n" }.count
        out.append(contentsOf: (trailing == 0 ? " |4-\n" : trailing == 1 ? " |4\n" : " |4+\n").utf8)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        if trailing > 0 { lines.removeLast() }
        for line in lines {
            if !line.isEmpty { pad(indent + 4, &out) }
            out.append(contentsOf: line.utf8)
            out.append(UInt8(ascii: "\n"))
        }
    }

    static func appendKey(_ key: String, to out: inout [UInt8]) {
        let plain = key.unicodeScalars.first.map { $0.properties.isAlphabetic && $0.isASCII || $0 == "_" } == true
            && key.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0)
                || $0 == "_" || $0 == "-" || $0 == ".") }
            && !["true", "false", "yes", "no", "on", "off", "null", "y", "n"].contains(key.lowercased())
        if plain { out.append(contentsOf: key.utf8) } else { appendQuoted(key, to: &out) }
    }

    /// A double-quoted YAML scalar: `\"`, `\\`, the short escapes, `\xNN` for other controls, `\N` `\L` `\P` for
    /// YAML's extra line breaks, `\uFEFF` for a byte order mark; everything else as UTF-8.
    static func appendQuoted(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out.append(contentsOf: "\\\"".utf8)
            case "\\": out.append(contentsOf: "\\\\".utf8)
            case "\n": out.append(contentsOf: "\\n".utf8)
            case "\t": out.append(contentsOf: "\\t".utf8)
            case "\r": out.append(contentsOf: "\\r".utf8)
            case "\u{85}": out.append(contentsOf: "\\N".utf8)
            case "\u{2028}": out.append(contentsOf: "\\L".utf8)
            case "\u{2029}": out.append(contentsOf: "\\P".utf8)
            case "\u{FEFF}": out.append(contentsOf: "\\uFEFF".utf8)
            default:
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out.append(contentsOf: ("\\x" + (hex.count < 2 ? "0" : "") + hex).utf8)
                } else {
                    out.append(contentsOf: String(scalar).utf8)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    static func pad(_ count: Int, _ out: inout [UInt8]) {
        out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: count))
    }
}
