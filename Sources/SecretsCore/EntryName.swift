/// The one rule for what can be a file or folder name under the mount, shared by listing, lookup, `write` and `set`:
/// not empty, not `.` or `..`, no `/` or NUL byte, at most 255 bytes (the kernel's limit for a name).
public enum EntryName {
    public static let maxBytes = 255

    /// Nil when `name` can be an entry; otherwise what is wrong, by length and byte position only (a name may be
    /// sensitive too, so the problem never quotes it).
    public static func problem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        if bytes.isEmpty { return "an empty name" }
        if name == "." || name == ".." { return "a name that is '.' or '..'" }
        if bytes.count > maxBytes { return "a name of \(bytes.count) bytes (at most \(maxBytes))" }
        if let index = bytes.firstIndex(of: UInt8(ascii: "/")) {
            return "a name of \(bytes.count) bytes with '/' at byte \(index + 1)"
        }
        if let index = bytes.firstIndex(of: 0) { return "a name of \(bytes.count) bytes with NUL at byte \(index + 1)" }
        return nil
    }

    public static func isValid(_ name: String) -> Bool { problem(name) == nil }
}
