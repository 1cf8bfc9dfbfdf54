/// How a whole-env file (`[[files]]` with `format`) writes an env's keys: each format's own quoting, so that the
/// format's usual parser reads back exactly the values (`python-dotenv`, `json`, a YAML 1.1/1.2 loader, TOML 1.0,
/// `java.util.Properties`, a POSIX shell's `.`/`source`). Keys a format cannot hold are refused at render, naming
/// the key (names are not secret; values never appear in an error).
public enum EnvFileFormat: String, Sendable, CaseIterable {
    case dotenv, json, yaml, toml, properties, shell

    /// Renders `entries` (sorted by name) into bytes the caller owns and wipes.
    public func render(_ entries: [(name: String, value: SecretValue)]) throws(SecretsError) -> [UInt8] {
        var out: [UInt8] = []
        do throws(SecretsError) {
            switch self {
            case .json: try renderJSON(entries, into: &out)
            case .yaml: try renderYAML(entries, into: &out)
            case .toml: try renderTOML(entries, into: &out)
            case .dotenv, .properties, .shell:
                for (name, value) in entries { try renderLine(name, value, into: &out) }
            }
        } catch {
            wipe(&out)
            throw error
        }
        return out
    }

    /// Sections of entries (every env of a store): TOML `[section]` tables, or one JSON/YAML object of objects.
    public func renderSections(_ sections: [(name: String, entries: [(name: String, value: SecretValue)])])
        throws(SecretsError) -> [UInt8]
    {
        var out: [UInt8] = []
        do throws(SecretsError) {
            switch self {
            case .toml:
                for (index, section) in sections.enumerated() {
                    if index > 0 { out.append(UInt8(ascii: "\n")) }
                    out.append(UInt8(ascii: "["))
                    Self.appendTOMLKey(section.name, into: &out)
                    out += Array("]\n".utf8)
                    try renderTOML(section.entries, into: &out)
                }
            case .json, .yaml:
                let tables = try sections.map { section throws(SecretsError) -> (name: String, value: SecretValue) in
                    var fields: [String: SecretValue] = [:]
                    for entry in section.entries { fields[entry.name] = try structured(entry.name, entry.value) }
                    return (section.name, .table(fields))
                }
                if self == .json { try renderJSON(tables, into: &out) } else { try renderYAML(tables, into: &out) }
            default:
                throw SecretsError(.invalidData, "\(rawValue) has no sections")
            }
        } catch {
            wipe(&out)
            throw error
        }
        return out
    }

    func refuse(_ name: String, _ why: String) -> SecretsError {
        SecretsError(.invalidData, "key '\(name)' cannot be written as \(rawValue): \(why)")
    }

    // MARK: Line formats

    /// The text a line format writes for a value: a string's own text, anything else compact JSON (as the file of
    /// the key reads); bytes that are not UTF-8 cannot be written in a text format.
    func text(_ name: String, _ value: SecretValue) throws(SecretsError) -> String {
        switch value {
        case .string(let text), .datetime(let text): return text
        case .bytes(let raw):
            guard let text = String(validating: raw, as: UTF8.self) else { throw refuse(name, "its value is not UTF-8 text") }
            return text
        default: return value.jsonText()
        }
    }

    private func renderLine(_ name: String, _ value: SecretValue, into out: inout [UInt8]) throws(SecretsError) {
        let text = try text(name, value)
        switch self {
        case .dotenv:
            // python-dotenv: a bare key, `=`, a single-quoted value where only \\ and \' are escapes (no ${}
            // interpolation inside single quotes); newlines stay literal inside the quotes.
            guard Self.isPlainKey(name, extra: ".-") else { throw refuse(name, "dotenv keys are letters, digits, '_', '.', '-'") }
            out += Array(name.utf8) + Array("='".utf8)
            for byte in text.utf8 {
                if byte == UInt8(ascii: "\\") || byte == UInt8(ascii: "'") { out.append(UInt8(ascii: "\\")) }
                out.append(byte)
            }
            out += Array("'\n".utf8)
        case .shell:
            // `export NAME='...'`: nothing is special inside single quotes but the quote itself, closed and escaped.
            guard Self.isPlainKey(name, extra: ""), name.first.map({ !$0.isNumber }) ?? false else {
                throw refuse(name, "shell variable names are letters, digits and '_', not starting with a digit")
            }
            out += Array("export \(name)='".utf8)
            for byte in text.utf8 {
                if byte == UInt8(ascii: "'") { out += Array("'\\''".utf8) } else { out.append(byte) }
            }
            out += Array("'\n".utf8)
        case .properties:
            // java.util.Properties.load: ISO-8859-1 with \uXXXX escapes, so everything beyond ASCII is escaped; in
            // keys also '=', ':', ' ', '#', '!'; leading spaces of a value escaped.
            guard !name.isEmpty else { throw refuse(name, "an empty key") }
            Self.appendProperties(name, key: true, into: &out)
            out.append(UInt8(ascii: "="))
            Self.appendProperties(text, key: false, into: &out)
            out.append(UInt8(ascii: "\n"))
        default:
            break
        }
    }

    static func isPlainKey(_ name: String, extra: String) -> Bool {
        !name.isEmpty && name.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || scalar == "_"
                || extra.unicodeScalars.contains(scalar))
        }
    }

    static func appendProperties(_ text: String, key: Bool, into out: inout [UInt8]) {
        var leading = true
        for unit in text.utf16 {
            switch unit {
            case 0x5C: out += Array("\\\\".utf8)
            case 0x0A: out += Array("\\n".utf8)
            case 0x0D: out += Array("\\r".utf8)
            case 0x09: out += Array("\\t".utf8)
            case 0x0C: out += Array("\\f".utf8)
            case 0x20: out += (key || leading) ? Array("\\ ".utf8) : [0x20]
            case 0x3D, 0x3A, 0x23, 0x21: out += key ? [UInt8(ascii: "\\"), UInt8(unit)] : [UInt8(unit)]
            case 0x21...0x7E: out.append(UInt8(unit))
            default: out += Array("\\u".utf8) + hex4(unit)
            }
            if unit != 0x20 { leading = false }
        }
    }

    static func hex4(_ unit: UInt16) -> [UInt8] {
        let digits = Array("0123456789abcdef".utf8)
        return [12, 8, 4, 0].map { digits[Int((unit >> UInt16($0)) & 0xF)] }
    }

    // MARK: Structured formats

    private func renderJSON(_ entries: [(name: String, value: SecretValue)], into out: inout [UInt8]) throws(SecretsError) {
        out += Array("{\n".utf8)
        for (index, entry) in entries.enumerated() {
            out += Array("  ".utf8)
            JSONText.appendString(entry.name, to: &out)
            out += Array(": ".utf8)
            try structured(entry.name, entry.value).appendJSON(to: &out)
            out += Array((index + 1 < entries.count ? ",\n" : "\n").utf8)
        }
        out += Array("}\n".utf8)
    }

    /// Bytes that are not UTF-8 cannot be a JSON, YAML or TOML string: refused rather than changed.
    func structured(_ name: String, _ value: SecretValue) throws(SecretsError) -> SecretValue {
        if case .bytes(let raw) = value {
            guard let text = String(validating: raw, as: UTF8.self) else { throw refuse(name, "its value is not UTF-8 text") }
            return .string(text)
        }
        return value
    }

    /// `"KEY": value` lines; strings double-quoted with YAML's escapes (valid for YAML 1.1 and 1.2 loaders), numbers
    /// and booleans plain, tables and arrays in flow style. Nothing is left for the loader to guess.
    private func renderYAML(_ entries: [(name: String, value: SecretValue)], into out: inout [UInt8]) throws(SecretsError) {
        if entries.isEmpty { out += Array("{}\n".utf8) }
        for entry in entries {
            Self.appendYAMLString(entry.name, into: &out)
            out += Array(": ".utf8)
            Self.appendYAML(try structured(entry.name, entry.value), into: &out)
            out.append(UInt8(ascii: "\n"))
        }
    }

    static func appendYAML(_ value: SecretValue, into out: inout [UInt8]) {
        switch value {
        case .string(let text), .datetime(let text): appendYAMLString(text, into: &out)
        case .bytes(let raw): appendYAMLString(String(decoding: raw, as: UTF8.self), into: &out)
        case .int(let number): out += Array(String(number).utf8)
        case .float(let number): out += Array(floatText(number, nan: ".nan", infinity: ".inf", exponentDot: true).utf8)
        case .bool(let flag): out += Array((flag ? "true" : "false").utf8)
        case .null: out += Array("null".utf8)
        case .array, .table:
            appendFlow(value, into: &out, braces: ("{", "}"), separator: ": ", key: appendYAMLString, element: appendYAML)
        }
    }

    /// Flow collections for YAML and TOML: `[a, b]` and `{k: v, ...}` / `{ k = v, ... }` with keys sorted.
    static func appendFlow(
        _ value: SecretValue, into out: inout [UInt8], braces: (String, String), separator: String,
        key: (String, inout [UInt8]) -> Void, element: (SecretValue, inout [UInt8]) -> Void
    ) {
        switch value {
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out += Array(", ".utf8) }
                element(item, &out)
            }
            out.append(UInt8(ascii: "]"))
        case .table(let fields):
            out += Array(braces.0.utf8)
            for (index, name) in fields.keys.sorted().enumerated() {
                if index > 0 { out += Array(", ".utf8) }
                key(name, &out)
                out += Array(separator.utf8)
                if let field = fields[name] { element(field, &out) }
            }
            out += Array(braces.1.utf8)
        default:
            element(value, &out)
        }
    }

    /// Swift writes 1.5, 2.0, 1e-05, 1e+20; TOML takes those with a '.0' added where none is, YAML 1.1 wants a '.'
    /// in every float (1.0e-05).
    static func floatText(_ number: Double, nan: String, infinity: String, exponentDot: Bool) -> String {
        if number.isNaN { return nan }
        if number.isInfinite { return (number < 0 ? "-" : "") + infinity }
        var text = String(number)
        guard !text.contains(".") else { return text }
        if let e = text.firstIndex(of: "e") {
            if exponentDot { text.insert(contentsOf: ".0", at: e) }
        } else {
            text += ".0"
        }
        return text
    }

    /// A YAML double-quoted scalar: printable ASCII and non-ASCII text as is, except the characters loaders treat
    /// as breaks or reject (C0/C1 controls, DEL, NEL, LS, PS, BOM), which are escaped.
    static func appendYAMLString(_ text: String, into out: inout [UInt8]) {
        appendQuoted(text, into: &out) { (0x00...0x1F).contains($0) || (0x7F...0x9F).contains($0) || [0x2028, 0x2029, 0xFEFF].contains($0) }
    }

    /// A double-quoted string with backslash escapes (YAML's and TOML's basic strings share these): `"`, `\`,
    /// `\n`, `\t`, `\r`, and `\uXXXX` for the scalars `escaped` names.
    static func appendQuoted(_ text: String, into out: inout [UInt8], escaped: (UInt32) -> Bool) {
        out.append(UInt8(ascii: "\""))
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x22: out += Array("\\\"".utf8)
            case 0x5C: out += Array("\\\\".utf8)
            case 0x0A: out += Array("\\n".utf8)
            case 0x09: out += Array("\\t".utf8)
            case 0x0D: out += Array("\\r".utf8)
            case let value where escaped(value): out += Array("\\u".utf8) + hex4(UInt16(value))
            default: out += Array(String(scalar).utf8)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `KEY = value` lines (TOML 1.0): bare keys when they can be, else basic-string keys; strings as basic
    /// strings with escapes, tables inline.
    private func renderTOML(_ entries: [(name: String, value: SecretValue)], into out: inout [UInt8]) throws(SecretsError) {
        for entry in entries {
            let value = try structured(entry.name, entry.value)
            if case .null = value { throw refuse(entry.name, "TOML has no null") }
            if Self.containsNull(value) { throw refuse(entry.name, "TOML has no null (inside its value)") }
            Self.appendTOMLKey(entry.name, into: &out)
            out += Array(" = ".utf8)
            Self.appendTOML(value, into: &out)
            out.append(UInt8(ascii: "\n"))
        }
    }

    static func containsNull(_ value: SecretValue) -> Bool {
        switch value {
        case .null: return true
        case .array(let items): return items.contains(where: containsNull)
        case .table(let fields): return fields.values.contains(where: containsNull)
        default: return false
        }
    }

    static func appendTOMLKey(_ name: String, into out: inout [UInt8]) {
        if isPlainKey(name, extra: "-") { out += Array(name.utf8) } else { appendTOMLString(name, into: &out) }
    }

    static func appendTOML(_ value: SecretValue, into out: inout [UInt8]) {
        switch value {
        case .string(let text), .datetime(let text): appendTOMLString(text, into: &out)
        case .bytes(let raw): appendTOMLString(String(decoding: raw, as: UTF8.self), into: &out)
        case .int(let number): out += Array(String(number).utf8)
        case .float(let number): out += Array(floatText(number, nan: "nan", infinity: "inf", exponentDot: false).utf8)
        case .bool(let flag): out += Array((flag ? "true" : "false").utf8)
        case .null: break
        case .array, .table:
            appendFlow(value, into: &out, braces: ("{ ", " }"), separator: " = ", key: appendTOMLKey, element: appendTOML)
        }
    }

    static func appendTOMLString(_ text: String, into out: inout [UInt8]) {
        appendQuoted(text, into: &out) { (0x00...0x1F).contains($0) || $0 == 0x7F }
    }
}
