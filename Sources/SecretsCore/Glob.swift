/// Shell-style globs for key names: `*` any run, `?` one character, `[abc]`, `[a-z]`, `[!x]`. Matching ignores case,
/// like Dynaconf's key handling.
public struct Glob: Sendable, Hashable, CustomStringConvertible {
    public let pattern: String
    private let scalars: [Unicode.Scalar]

    public init(_ pattern: String) {
        self.pattern = pattern
        self.scalars = Array(pattern.lowercased().unicodeScalars)
    }

    public var description: String { pattern }

    public func matches(_ name: String) -> Bool {
        Self.match(scalars[...], Array(name.lowercased().unicodeScalars)[...])
    }

    private static func match(_ pattern: ArraySlice<Unicode.Scalar>, _ text: ArraySlice<Unicode.Scalar>) -> Bool {
        var p = pattern.startIndex
        var t = text.startIndex
        var star: (p: Int, t: Int)?
        while t < text.endIndex {
            if p < pattern.endIndex {
                let token = pattern[p]
                if token == "*" {
                    star = (p, t)
                    p += 1
                    continue
                }
                if token == "?" {
                    p += 1
                    t += 1
                    continue
                }
                if token == "[", let (matched, next) = matchClass(pattern, p, text[t]) {
                    if matched {
                        p = next
                        t += 1
                        continue
                    }
                } else if token == text[t] {
                    p += 1
                    t += 1
                    continue
                }
            }
            guard let saved = star else { return false }
            p = saved.p + 1
            t = saved.t + 1
            star = (saved.p, saved.t + 1)
        }
        while p < pattern.endIndex && pattern[p] == "*" { p += 1 }
        return p == pattern.endIndex
    }

    /// Matches a `[...]` class at `start`; returns whether `char` is in it and the index after `]`, or nil when the
    /// bracket is not closed (then it is a literal `[`).
    private static func matchClass(
        _ pattern: ArraySlice<Unicode.Scalar>, _ start: Int, _ char: Unicode.Scalar
    ) -> (Bool, Int)? {
        var index = start + 1
        var negate = false
        if index < pattern.endIndex, pattern[index] == "!" || pattern[index] == "^" {
            negate = true
            index += 1
        }
        var matched = false
        var first = true
        while index < pattern.endIndex {
            let low = pattern[index]
            if low == "]" && !first {
                return (matched != negate, index + 1)
            }
            first = false
            if index + 2 < pattern.endIndex, pattern[index + 1] == "-", pattern[index + 2] != "]" {
                if low.value <= char.value && char.value <= pattern[index + 2].value { matched = true }
                index += 3
            } else {
                if low == char { matched = true }
                index += 1
            }
        }
        return nil
    }
}
