import SecretsCore

/// Versions of the supervisor/worker protocol and of the re-exec state.
///
/// - Version 0: the releases before versions existed (up to 64aab13). No preamble: the first packet is the hello;
///   the re-exec state starts with the connection's descriptor.
/// - Version 1: every message stream starts with a preamble packet, `SFSH` and the version (u16, little-endian);
///   the re-exec state starts with `SFSR` and its version, and records the running worker's protocol version.
/// - Version 2: the worker takes `--inflight-fd 5`, a page where it stamps the requests it serves (`InflightPage`),
///   so the supervisor can tell a request of death; the re-exec state records that page's descriptor.
/// - Version 3: node records of published CSI volumes (tag 4) and of the files in their views (tag 3). A worker
///   serves CSI only on a channel of version 3 or later; a supervisor holding volumes re-executes only into a binary
///   that speaks it. The re-exec state records fusermount3's auto_unmount sockets. Takeover by an independent
///   process (`TakeoverMessage`) speaks version 3 or later.
///
/// A supervisor asks a binary which versions it speaks before starting it as a worker or re-executing into it
/// (`secretsfs handover-protocol`; a binary of version 0 does not know that command, which says so), then speaks the
/// newest both know, or refuses with a log line and keeps the running worker.
public enum HandoverProtocol {
    public static let current: UInt16 = 3
    public static let oldest: UInt16 = 0
    public static var supported: ClosedRange<UInt16> { oldest...current }
    /// The first version with CSI volumes' node records.
    public static let csiVolumes: UInt16 = 3
    /// The first version with takeover by an independent process.
    public static let takeover: UInt16 = 3

    static let streamMagic: [UInt8] = Array("SFSH".utf8)
    static let stateMagic: [UInt8] = Array("SFSR".utf8)

    /// The newest version both sides speak, if any.
    public static func negotiate(_ ours: ClosedRange<UInt16>, _ theirs: ClosedRange<UInt16>) -> UInt16? {
        let newest = min(ours.upperBound, theirs.upperBound)
        return newest >= max(ours.lowerBound, theirs.lowerBound) ? newest : nil
    }

    /// What `secretsfs handover-protocol` prints: `secretsfs-handover <oldest> <current>`.
    public static var announcement: String { "secretsfs-handover \(oldest) \(current)" }

    /// Reads an announcement back (nil if the text is not one).
    public static func parseAnnouncement(_ text: String) -> ClosedRange<UInt16>? {
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count == 3, words[0] == "secretsfs-handover", let low = UInt16(words[1]),
                let high = UInt16(words[2]), low <= high
            else { continue }
            return low...high
        }
        return nil
    }

    /// The preamble packet of a stream of `version` (none for version 0).
    static func preamble(_ version: UInt16) -> [UInt8]? {
        version == 0 ? nil : streamMagic + [UInt8(truncatingIfNeeded: version), UInt8(truncatingIfNeeded: version >> 8)]
    }

    /// The version a preamble packet announces; nil when the packet is a message (messages never start with `S`).
    static func preambleVersion(_ packet: [UInt8]) throws(SecretsError) -> UInt16? {
        guard packet.count >= 4, Array(packet[0..<4]) == streamMagic else { return nil }
        guard packet.count == 6 else { throw SecretsError(.invalidData, "malformed handover preamble") }
        return UInt16(packet[4]) | UInt16(packet[5]) << 8
    }
}
