import Glibc

/// Who asks: the caller of a FUSE request (uid, gid, pid from the kernel), or this process for `get`.
public struct Caller: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    public var pid: Int32

    public init(uid: UInt32, gid: UInt32, pid: Int32) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }

    public static var current: Caller { Caller(uid: getuid(), gid: getgid(), pid: getpid()) }
}

/// What is known of a caller beyond uid/gid/pid, read from /proc when a rule or the audit needs it.
public struct CallerDetails: Sendable, Equatable {
    public var exe: String?
    /// The cgroup v2 path (`0::/system.slice/billing.service` gives `/system.slice/billing.service`).
    public var cgroup: String?
    /// Supplementary groups.
    public var groups: [UInt32]
    /// The Kubernetes pod the caller runs in, when its cgroup names a pod a CSI volume was published for.
    public var pod: PodIdentity?

    public init(exe: String?, cgroup: String?, groups: [UInt32], pod: PodIdentity? = nil) {
        self.pod = pod
        self.exe = exe
        self.cgroup = cgroup
        self.groups = groups
    }

    /// The systemd unit: the last component of the cgroup path that names a service or scope.
    public var unit: String? {
        guard let cgroup else { return nil }
        return cgroup.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }

    /// Reads /proc/<pid>/exe, /proc/<pid>/cgroup and /proc/<pid>/status. A process that is gone gives nothing.
    public static func read(pid: Int32) -> CallerDetails {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/\(pid)/exe", &buffer, buffer.count - 1)
        let exe = count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
        // cgroup v2 ("0::<path>"); on a v1 host, where that is "/", systemd's own hierarchy names the unit.
        var unified: String?
        var systemd: String?
        if let text = try? FileIO.readText("/proc/\(pid)/cgroup") {
            for line in text.split(separator: "\n") {
                if line.hasPrefix("0::") { unified = String(line.dropFirst(3)) }
                if let range = line.range(of: ":name=systemd:") { systemd = String(line[range.upperBound...]) }
            }
        }
        let cgroup = unified == "/" || unified == nil ? (systemd ?? unified) : unified
        var groups: [UInt32] = []
        if let text = try? FileIO.readText("/proc/\(pid)/status") {
            for line in text.split(separator: "\n") where line.hasPrefix("Groups:") {
                groups = line.dropFirst(7).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
            }
        }
        return CallerDetails(exe: exe, cgroup: cgroup, groups: groups)
    }
}

/// One entry of a rule's `allow` list.
public enum CallerPattern: Sendable, Equatable, CustomStringConvertible {
    case uid(UInt32)
    case gid(UInt32)
    /// A systemd unit, from the caller's cgroup.
    case unit(String)
    /// A cgroup path prefix (containers: `/kubepods/...`, `/system.slice/docker-<id>.scope`).
    case cgroup(String)
    /// The caller's executable, exactly.
    case exe(String)
    /// A Kubernetes identity, `namespace/serviceaccount` (`*` for any service account of the namespace): a caller
    /// in a pod a CSI volume was published for, running as that service account.
    case k8s(namespace: String, serviceAccount: String)

    public static let kinds = ["uid", "gid", "unit", "cgroup", "exe", "k8s"]

    /// `kind:value`; nil when the kind is unknown or the value malformed.
    public init?(_ text: String) {
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let kind = text[..<colon]
        let value = String(text[text.index(after: colon)...])
        guard !value.isEmpty else { return nil }
        switch kind {
        case "uid":
            guard let number = UInt32(value) ?? Self.user(value) else { return nil }
            self = .uid(number)
        case "gid":
            guard let number = UInt32(value) ?? Self.group(value) else { return nil }
            self = .gid(number)
        case "unit": self = .unit(value)
        case "cgroup":
            guard value.hasPrefix("/") else { return nil }
            self = .cgroup(value)
        case "exe":
            guard value.hasPrefix("/") else { return nil }
            self = .exe(value)
        case "k8s":
            let parts = value.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty }) else { return nil }
            self = .k8s(namespace: String(parts[0]), serviceAccount: String(parts[1]))
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .uid(let id): return "uid:\(id)"
        case .gid(let id): return "gid:\(id)"
        case .unit(let name): return "unit:\(name)"
        case .cgroup(let prefix): return "cgroup:\(prefix)"
        case .exe(let path): return "exe:\(path)"
        case .k8s(let namespace, let account): return "k8s:\(namespace)/\(account)"
        }
    }

    /// Whether this pattern needs /proc details (everything but uid and the primary gid).
    var needsDetails: Bool {
        switch self {
        case .uid: return false
        default: return true
        }
    }

    func matches(_ caller: Caller, _ details: () -> CallerDetails) -> Bool {
        switch self {
        case .uid(let id): return caller.uid == id
        case .gid(let id): return caller.gid == id || details().groups.contains(id)
        case .unit(let name): return details().unit == name
        case .cgroup(let prefix):
            guard let cgroup = details().cgroup else { return false }
            return cgroup == prefix || cgroup.hasPrefix(prefix.hasSuffix("/") ? prefix : prefix + "/")
        case .exe(let path): return details().exe == path
        case .k8s(let namespace, let account):
            guard let pod = details().pod else { return false }
            return pod.namespace == namespace && (account == "*" || pod.serviceAccount == account)
        }
    }

    static func user(_ name: String) -> UInt32? { getpwnam(name).map { $0.pointee.pw_uid } }
    static func group(_ name: String) -> UInt32? { getgrnam(name).map { $0.pointee.gr_gid } }
}

/// One `[[access]]` table: which paths it covers and what it sets for them.
public struct AccessRule: Sendable {
    /// The `<top>/<env>/<key>` glob as written, and its three segments.
    public var path: String
    var segments: [Glob]
    public var uid: UInt32?
    public var gid: UInt32?
    public var fileMode: UInt32?
    public var dirMode: UInt32?
    /// Empty: anyone the modes let in; otherwise only these callers.
    public var allow: [CallerPattern]
    /// Where the rule stands in the config, for warnings.
    public var location: SourceLocation

    func matches(top: String, env: String?, key: String?) -> Bool {
        guard segments[0].matches(top) else { return false }
        if let env, !segments[1].matches(env) { return false }
        if let key, !segments[2].matches(key) { return false }
        return true
    }

    init(_ section: ConfigSection, index: Int) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["path", "uid", "gid", "user", "group", "file_mode", "dir_mode", "allow"])
        location = section.error("path", "").location
        guard let path = try section.string("path") else {
            throw section.error(nil, "access rule #\(index + 1) needs path = \"<store or scope>/<env>/<key>\" (globs)")
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty }) else {
            throw section.error("path", "access rule #\(index + 1): path must be <store or scope>/<env>/<key>, such as billing/production/* or */*/DB_*")
        }
        self.path = path
        segments = parts.map { Glob(String($0)) }
        uid = try section.uint32("uid")
        gid = try section.uint32("gid")
        if let user = try section.string("user") {
            guard uid == nil else { throw section.error("user", "give uid or user, not both") }
            guard let found = CallerPattern.user(user) else { throw section.error("user", "no user named '\(user)' on this host") }
            uid = found
        }
        if let group = try section.string("group") {
            guard gid == nil else { throw section.error("group", "give gid or group, not both") }
            guard let found = CallerPattern.group(group) else { throw section.error("group", "no group named '\(group)' on this host") }
            gid = found
        }
        fileMode = try section.mode("file_mode")
        dirMode = try section.mode("dir_mode")
        var allow: [CallerPattern] = []
        for text in try section.stringArray("allow") ?? [] {
            guard let pattern = CallerPattern(text) else {
                throw section.error(
                    "allow",
                    "access rule #\(index + 1): '\(text)' is not a caller (\(CallerPattern.kinds.map { "\($0):..." }.joined(separator: ", ")); uid/gid take a number or a name, cgroup and exe an absolute path, k8s namespace/serviceaccount)")
            }
            allow.append(pattern)
        }
        self.allow = allow
    }
}

/// `[audit]`: where decisions are recorded, and for which paths.
public struct AuditConfig: Sendable {
    /// A JSON-lines file, appended, mode 0600, reopened on SIGUSR1.
    public var path: String?
    /// Also (or instead) to the log (stderr: the journal under systemd).
    public var journal: Bool
    /// `<top>/<env>/<key>` globs of audited paths; nil: the paths that have `allow` rules.
    public var paths: [String]?

    public var enabled: Bool { path != nil || journal }

    init(_ section: ConfigSection) throws(LocatedError) {
        try section.rejectUnknown(allowed: ["path", "journal", "paths"])
        path = try section.path("path")
        journal = try section.bool("journal") ?? false
        paths = try section.stringArray("paths")
        for pattern in paths ?? [] where pattern.split(separator: "/", omittingEmptySubsequences: false).count != 3 {
            throw section.error("paths", "audit paths are <store or scope>/<env>/<key> globs, such as */production/*")
        }
    }

    public init() {
        path = nil
        journal = false
        paths = nil
    }
}

/// The decisions of `[[access]]` and `[audit]` for one path: owner and modes, who may open it, whether it is
/// audited. The first rule whose path matches wins for each setting it gives; `[mount]` supplies the rest.
public struct AccessPolicy: Sendable {
    public let rules: [AccessRule]
    public let audit: AuditConfig
    let defaults: MountConfig
    let auditGlobs: [[Glob]]?

    public init(config: Config) {
        rules = config.access
        audit = config.audit
        defaults = config.mount
        auditGlobs = config.audit.paths?.map { $0.split(separator: "/").map { Glob(String($0)) } }
    }

    public struct Attributes: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var mode: UInt32

        public init(uid: UInt32, gid: UInt32, mode: UInt32) {
            self.uid = uid
            self.gid = gid
            self.mode = mode
        }
    }

    /// A file's owner and mode: each from the first matching rule that sets it.
    public func file(top: String, env: String, key: String) -> Attributes {
        let matching = rules.filter { $0.matches(top: top, env: env, key: key) }
        return Attributes(
            uid: matching.lazy.compactMap(\.uid).first ?? defaults.uid,
            gid: matching.lazy.compactMap(\.gid).first ?? defaults.gid,
            mode: matching.lazy.compactMap(\.fileMode).first ?? defaults.fileMode)
    }

    /// A store's or env's directory: the first rule under it that sets an owner or dir_mode, so that the readers a
    /// rule names can walk to their files. The root keeps `[mount]`'s.
    public func directory(top: String?, env: String?) -> Attributes {
        guard let top else { return Attributes(uid: defaults.uid, gid: defaults.gid, mode: defaults.dirMode) }
        let matching = rules.filter { $0.matches(top: top, env: env, key: nil) }
        return Attributes(
            uid: matching.lazy.compactMap(\.uid).first ?? defaults.uid,
            gid: matching.lazy.compactMap(\.gid).first ?? defaults.gid,
            mode: matching.lazy.compactMap(\.dirMode).first ?? defaults.dirMode)
    }

    /// The callers allowed to open a file, from the first matching rule that has an `allow` list; nil: no limit.
    public func allowList(top: String, env: String, key: String) -> [CallerPattern]? {
        rules.first { !$0.allow.isEmpty && $0.matches(top: top, env: env, key: key) }?.allow
    }

    public func isAudited(top: String, env: String, key: String) -> Bool {
        guard audit.enabled else { return false }
        guard let auditGlobs else { return allowList(top: top, env: env, key: key) != nil }
        return auditGlobs.contains { globs in
            globs.count == 3 && globs[0].matches(top) && globs[1].matches(env) && globs[2].matches(key)
        }
    }

    /// Whether every open of the path must reach the daemon (entry timeout 0): it has callers to check or is audited.
    public func needsEveryOpen(top: String, env: String, key: String) -> Bool {
        allowList(top: top, env: env, key: key) != nil || isAudited(top: top, env: env, key: key)
    }

    /// Whether `caller` may open the file.
    public func allows(_ caller: Caller, top: String, env: String, key: String, details: () -> CallerDetails) -> Bool {
        guard let allow = allowList(top: top, env: env, key: key) else { return true }
        return allow.contains { $0.matches(caller, details) }
    }

    /// Rules whose store/scope segment matches no configured top (a typo, most likely): warned at start.
    public func unmatchedRules(tops: [String]) -> [AccessRule] {
        rules.filter { rule in !tops.contains { rule.segments[0].matches($0) } }
    }
}
