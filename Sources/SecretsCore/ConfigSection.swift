import Glibc

/// A table of the config with typed accessors whose errors point at the key's line.
public struct ConfigSection: Sendable {
    public let document: TOMLDocument
    public let path: [String]
    public let values: [String: SecretValue]

    public var keys: [String] { values.keys.sorted() }
    public var directory: String {
        guard let slash = document.file.lastIndex(of: "/") else { return "." }
        return String(document.file[..<slash])
    }

    public func error(_ key: String?, _ message: String) -> LocatedError {
        let full = path + (key.map { [$0] } ?? [])
        return LocatedError(document.location(of: full), message)
    }

    /// The dotted name a message shows (an array element's index is left out).
    private func name(_ key: String) -> String {
        (path + [key]).filter { !$0.hasPrefix("\u{0}") }.joined(separator: ".")
    }

    /// Element `index` of an array of tables (`[[files]]`): its errors point at that element's lines.
    public static func element(of document: TOMLDocument, _ array: String, _ index: Int, values: [String: SecretValue])
        -> ConfigSection
    {
        ConfigSection(document: document, path: [array, KeyLocator.element(index)], values: values)
    }

    public func rejectUnknown(allowed: Set<String>) throws(LocatedError) {
        for key in keys where !allowed.contains(key) {
            throw error(key, "unknown key '\(name(key))' (known: \(allowed.sorted().joined(separator: ", ")))")
        }
    }

    public func section(_ key: String, required: Bool = false) throws(LocatedError) -> ConfigSection {
        switch values[key] {
        case .table(let fields)?:
            return ConfigSection(document: document, path: path + [key], values: fields)
        case nil where !required:
            return ConfigSection(document: document, path: path + [key], values: [:])
        default:
            throw error(key, "'\(name(key))' must be a table")
        }
    }

    public func string(_ key: String) throws(LocatedError) -> String? {
        switch values[key] {
        case nil: return nil
        case .string(let text)?: return text
        default: throw error(key, "'\(name(key))' must be a string")
        }
    }

    /// A file path; `${VAR}` is replaced by the environment variable (systemd's `${CREDENTIALS_DIRECTORY}`, say;
    /// an unset one is an error here), and relative paths are taken relative to the config file's folder.
    public func path(_ key: String) throws(LocatedError) -> String? {
        guard let raw = try string(key) else { return nil }
        return absolutePath(try expand(raw, key: key))
    }

    /// `${NAME}` replaced by the environment's value; `$` alone stays.
    public func expand(_ text: String, key: String) throws(LocatedError) -> String {
        var out = ""
        var rest = Substring(text)
        while let dollar = rest.range(of: "${") {
            out += rest[..<dollar.lowerBound]
            guard let close = rest[dollar.upperBound...].firstIndex(of: "}") else {
                throw error(key, "'\(name(key))': '${' without a closing '}'")
            }
            let variable = String(rest[dollar.upperBound..<close])
            guard !variable.isEmpty, let value = getenv(variable) else {
                throw error(key, "'\(name(key))' uses ${\(variable)}, which is not set in the environment")
            }
            out += String(cString: value)
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }

    public func absolutePath(_ path: String) -> String { FileIO.absolute(path, in: directory) }

    public func bool(_ key: String) throws(LocatedError) -> Bool? {
        switch values[key] {
        case nil: return nil
        case .bool(let flag)?: return flag
        default: throw error(key, "'\(name(key))' must be true or false")
        }
    }

    public func int(_ key: String) throws(LocatedError) -> Int64? {
        switch values[key] {
        case nil: return nil
        case .int(let number)?: return number
        default: throw error(key, "'\(name(key))' must be an integer")
        }
    }

    public func uint32(_ key: String) throws(LocatedError) -> UInt32? {
        guard let number = try int(key) else { return nil }
        guard let value = UInt32(exactly: number) else {
            throw error(key, "'\(name(key))' must be between 0 and \(UInt32.max)")
        }
        return value
    }

    public func stringArray(_ key: String) throws(LocatedError) -> [String]? {
        switch values[key] {
        case nil: return nil
        case .string(let single)?: return [single]
        case .array(let items)?:
            var out: [String] = []
            for item in items {
                guard case .string(let text) = item else {
                    throw error(key, "'\(name(key))' must be a list of strings")
                }
                out.append(text)
            }
            return out
        default: throw error(key, "'\(name(key))' must be a list of strings")
        }
    }

    /// A file mode: a string of octal digits ("0400") or a TOML integer (0o400).
    public func mode(_ key: String) throws(LocatedError) -> UInt32? {
        switch values[key] {
        case nil: return nil
        case .int(let number)? where (0...0o7777).contains(number):
            return UInt32(number)
        case .string(let text)?:
            if let value = UInt32(text, radix: 8), value <= 0o7777 { return value }
            throw error(key, "'\(name(key))' must be an octal mode such as \"0400\"")
        default:
            throw error(key, "'\(name(key))' must be an octal mode such as \"0400\"")
        }
    }

    /// A duration: "500ms", "30s", "5m", "2h", "1d", a plain number of seconds, or "0".
    public func duration(_ key: String) throws(LocatedError) -> Double? {
        switch values[key] {
        case nil: return nil
        case .int(let number)? where number >= 0: return Double(number)
        case .float(let number)? where number >= 0 && number.isFinite: return number
        case .string(let text)?:
            if let seconds = Self.parseDuration(text) { return seconds }
            throw error(key, "'\(name(key))' must be a duration such as \"30s\", \"5m\" or \"1h\"")
        default:
            throw error(key, "'\(name(key))' must be a duration such as \"30s\", \"5m\" or \"1h\"")
        }
    }

    public static func parseDuration(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            if let value = Double(number), value >= 0, value.isFinite { return value * scale }
        }
        if let value = Double(text), value >= 0, value.isFinite { return value }
        return nil
    }
}
