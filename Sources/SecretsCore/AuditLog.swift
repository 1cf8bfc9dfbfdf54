import Glibc
import Logging
import Locking

/// One recorded decision. Never a value, never a token.
public struct AuditEntry: Sendable {
    public enum Decision: String, Sendable {
        case allowed
        case denied
        case notFound = "not found"
        case error
    }

    public var via: String
    public var path: String
    public var decision: Decision
    public var caller: Caller
    public var details: CallerDetails
    /// fresh, cached, stale, or nil when nothing was read.
    public var cache: String?
    /// A rendered file: the keys it used (names only).
    public var keys: [String]?

    public init(
        via: String, path: String, decision: Decision, caller: Caller, details: CallerDetails, cache: String?,
        keys: [String]? = nil
    ) {
        self.keys = keys
        self.via = via
        self.path = path
        self.decision = decision
        self.caller = caller
        self.details = details
        self.cache = cache
    }

    /// One JSON object on one line.
    public func jsonLine(time: (seconds: Int, nanoseconds: Int)) -> String {
        var fields: [(String, String)] = [
            ("time", JSONText.quoted(Self.timestamp(time))), ("via", JSONText.quoted(via)), ("path", JSONText.quoted(path)),
            ("decision", JSONText.quoted(decision.rawValue)), ("uid", "\(caller.uid)"), ("gid", "\(caller.gid)"),
            ("pid", "\(caller.pid)"),
        ]
        if let exe = details.exe { fields.append(("exe", JSONText.quoted(exe))) }
        if let unit = details.unit { fields.append(("unit", JSONText.quoted(unit))) }
        if let cgroup = details.cgroup { fields.append(("cgroup", JSONText.quoted(cgroup))) }
        if let pod = details.pod {
            fields.append(("namespace", JSONText.quoted(pod.namespace)))
            fields.append(("pod", JSONText.quoted(pod.name)))
            fields.append(("service_account", JSONText.quoted(pod.serviceAccount)))
        }
        if let cache { fields.append(("cache", JSONText.quoted(cache))) }
        if let keys { fields.append(("keys", "[" + keys.map(JSONText.quoted).joined(separator: ",") + "]")) }
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp(_ time: (seconds: Int, nanoseconds: Int)) -> String {
        var seconds = time_t(time.seconds)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(time.nanoseconds / 1_000_000), 3))Z"
    }
}

/// Where audit entries go: a JSON-lines file (appended, 0600, reopened on SIGUSR1 for logrotate) and/or the log.
public final class AuditLog: Sendable {
    let path: String?
    let journal: Bool
    let logger: Logger
    /// The open log; a writer takes a reference under the lock and writes after releasing it (no syscall under a
    /// lock FUSE threads take), so a reopen never closes a descriptor a write still uses.
    let descriptor = Locked<OpenFile?>(nil)

    final class OpenFile: Sendable {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }

    public init(config: AuditConfig, logger: Logger) throws(SecretsError) {
        path = config.path
        journal = config.journal
        self.logger = logger
        if let path { try open(path) }
    }

    private func open(_ path: String) throws(SecretsError) {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SecretsError(.io, "cannot open the audit log \(path): \(FileIO.errnoText(errno))") }
        // An existing file keeps its owner; its mode is made private.
        fchmod(fd, 0o600)
        let opened = OpenFile(fd)
        // The old file is closed when its last writer lets go of it (outside the lock).
        let old = descriptor.withLock { state -> OpenFile? in
            defer { state = opened }
            return state
        }
        _ = old
    }

    /// After logrotate moved the file away: write to a new one at the same path.
    public func reopen() {
        guard let path else { return }
        do {
            try open(path)
            logger.info("audit log reopened", metadata: ["path": "\(path)"])
        } catch {
            logger.error("audit log could not be reopened", metadata: ["error": "\(error)"])
        }
    }

    public func record(_ entry: AuditEntry) {
        let line = entry.jsonLine(time: CoreClock.wall())
        if journal { logger.info("audit \(line)") }
        guard path != nil else { return }
        let bytes = Array((line + "\n").utf8)
        // One write per line on an O_APPEND descriptor: lines from several threads never interleave.
        guard let file = descriptor.withLock({ $0 }) else { return }
        let written = bytes.withUnsafeBytes { write(file.fd, $0.baseAddress, $0.count) }
        if written != bytes.count {
            logger.error("audit log write failed", metadata: ["errno": "\(errno)"])
        }
    }
}
