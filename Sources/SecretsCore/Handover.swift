/// What the supervisor and its workers say to each other over their control socket (a SOCK_SEQPACKET pair, one
/// message a packet), and what a re-executed supervisor reads back. Never a secret value: file nodes carry a path,
/// a size, a time and a keyed digest.
public enum HandoverMessage: Sendable, Equatable {
    /// Supervisor to a new worker: the digest key of this mount, the FUSE_INIT request as the kernel sent it, the
    /// config it must serve, and whether it replaces a running worker (a reload) or a dead one.
    case hello(Hello)
    /// Worker to supervisor: stores built, ready to take the connection.
    case ready
    /// Supervisor to worker: the node table of every earlier worker, one node a message.
    case node(NodeRecord)
    /// Worker to supervisor: this file node was forgotten by the kernel.
    case removed(UInt64)
    /// Supervisor to worker: the table is complete; take the connection. `nextInode` is above every id ever issued.
    case go(nextInode: UInt64)
    /// Worker to supervisor: serving.
    case serving

    public struct Hello: Sendable, Equatable {
        public var digestKey: [UInt8]
        public var initRequest: [UInt8]
        public var configPath: String
        public var configText: String
        public var reload: Bool
        /// Fixed at the first INIT (the kernel remembers an ENOSYS open per connection): every worker keeps it.
        public var noOpen: Bool
        /// Where the connection is mounted (the config's path, or `--mountpoint`).
        public var mountPath: String
        /// Workers that died and were replaced on this connection so far (reloads not counted).
        public var restarts: UInt64 = 0

        public init(
            digestKey: [UInt8], initRequest: [UInt8], configPath: String, configText: String, reload: Bool,
            noOpen: Bool, mountPath: String
        ) {
            self.mountPath = mountPath
            self.digestKey = digestKey
            self.initRequest = initRequest
            self.configPath = configPath
            self.configText = configText
            self.reload = reload
            self.noOpen = noOpen
        }
    }

    public func encoded() -> [UInt8] {
        var writer = HandoverWriter()
        switch self {
        case .hello(let hello):
            writer.byte(1)
            writer.bytes(hello.digestKey)
            writer.bytes(hello.initRequest)
            writer.string(hello.configPath)
            writer.string(hello.configText)
            writer.byte(hello.reload ? 1 : 0)
            writer.byte(hello.noOpen ? 1 : 0)
            writer.string(hello.mountPath)
            writer.u64(hello.restarts)
        case .ready:
            writer.byte(2)
        case .node(let record):
            writer.byte(3)
            record.encode(into: &writer)
        case .removed(let inode):
            writer.byte(4)
            writer.u64(inode)
        case .go(let nextInode):
            writer.byte(5)
            writer.u64(nextInode)
        case .serving:
            writer.byte(6)
        }
        return writer.output
    }

    public static func decode(_ bytes: [UInt8]) throws(SecretsError) -> HandoverMessage {
        var reader = HandoverReader(bytes)
        let message: HandoverMessage
        switch try reader.byte() {
        case 1:
            let key = try reader.bytes()
            let request = try reader.bytes()
            let path = try reader.string()
            let text = try reader.string()
            let reload = try reader.byte() == 1
            let noOpen = try reader.byte() == 1
            let mountPath = try reader.string()
            var hello = Hello(
                digestKey: key, initRequest: request, configPath: path, configText: text, reload: reload,
                noOpen: noOpen, mountPath: mountPath)
            hello.restarts = try reader.u64()
            message = .hello(hello)
        case 2: message = .ready
        case 3: message = .node(try NodeRecord.decode(from: &reader))
        case 4: message = .removed(try reader.u64())
        case 5: message = .go(nextInode: try reader.u64())
        case 6: message = .serving
        case let tag: throw SecretsError(.invalidData, "unknown handover message \(tag)")
        }
        try reader.finish()
        return message
    }
}

/// One node the kernel may still ask about, as the supervisor keeps it between workers.
public enum NodeRecord: Sendable, Equatable {
    case directory(inode: UInt64, top: String?, env: String?)
    case file(FileRecord)

    public var inode: UInt64 {
        switch self {
        case .directory(let inode, _, _): return inode
        case .file(let file): return file.inode
        }
    }

    func encode(into writer: inout HandoverWriter) {
        switch self {
        case .directory(let inode, let top, let env):
            writer.byte(1)
            writer.u64(inode)
            writer.optionalString(top)
            writer.optionalString(env)
        case .file(let file):
            writer.byte(2)
            writer.u64(file.inode)
            writer.u64(file.parent)
            writer.string(file.top)
            writer.string(file.env)
            writer.string(file.key)
            writer.u64(UInt64(file.size))
            writer.u64(UInt64(bitPattern: Int64(file.modifiedSeconds)))
            writer.u64(UInt64(file.modifiedNanoseconds))
            writer.bytes(file.digest)
        }
    }

    static func decode(from reader: inout HandoverReader) throws(SecretsError) -> NodeRecord {
        switch try reader.byte() {
        case 1:
            let inode = try reader.u64()
            return .directory(inode: inode, top: try reader.optionalString(), env: try reader.optionalString())
        case 2:
            let inode = try reader.u64()
            let parent = try reader.u64()
            let top = try reader.string()
            let env = try reader.string()
            let key = try reader.string()
            let size = try reader.u64()
            let seconds = Int64(bitPattern: try reader.u64())
            let nanoseconds = try reader.u64()
            let digest = try reader.bytes()
            guard size <= UInt64(Int32.max), nanoseconds < 1_000_000_000 else {
                throw SecretsError(.invalidData, "file node \(inode) has an impossible size or time")
            }
            return .file(
                FileRecord(
                    inode: inode, parent: parent, top: top, env: env, key: key, size: Int(size),
                    modifiedSeconds: Int(seconds), modifiedNanoseconds: Int(nanoseconds), digest: digest))
        case let tag:
            throw SecretsError(.invalidData, "unknown node record \(tag)")
        }
    }
}

/// A file node: where its value came from and a keyed digest of the value it was created with, so that a later
/// worker can tell whether a value it fetches again is the same one.
public struct FileRecord: Sendable, Equatable {
    public var inode: UInt64
    public var parent: UInt64
    public var top: String
    public var env: String
    public var key: String
    public var size: Int
    public var modifiedSeconds: Int
    public var modifiedNanoseconds: Int
    public var digest: [UInt8]

    public init(
        inode: UInt64, parent: UInt64, top: String, env: String, key: String, size: Int, modifiedSeconds: Int,
        modifiedNanoseconds: Int, digest: [UInt8]
    ) {
        self.inode = inode
        self.parent = parent
        self.top = top
        self.env = env
        self.key = key
        self.size = size
        self.modifiedSeconds = modifiedSeconds
        self.modifiedNanoseconds = modifiedNanoseconds
        self.digest = digest
    }
}

/// The node table as the supervisor keeps it: every directory, every file node the kernel has not forgotten, and
/// the highest id ever issued (ids are never reused on one connection).
public struct NodeTable: Sendable, Equatable {
    public private(set) var nodes: [UInt64: NodeRecord] = [:]
    public private(set) var highestInode: UInt64 = FileSystemCore.rootInode

    public init() {}

    public mutating func apply(_ message: HandoverMessage) {
        switch message {
        case .node(let record):
            nodes[record.inode] = record
            highestInode = max(highestInode, record.inode)
        case .removed(let inode):
            if case .file? = nodes[inode] { nodes.removeValue(forKey: inode) }
        default:
            break
        }
    }

    /// The records in id order, directories first so a file's parent is always known before it.
    public var records: [NodeRecord] {
        nodes.values.sorted { lhs, rhs in
            switch (lhs, rhs) {
            case (.directory, .file): return true
            case (.file, .directory): return false
            default: return lhs.inode < rhs.inode
            }
        }
    }

    /// The whole table as bytes (for a supervisor that re-executes itself).
    public func encoded() -> [UInt8] {
        var writer = HandoverWriter()
        writer.u64(highestInode)
        writer.u64(UInt64(nodes.count))
        for record in records { record.encode(into: &writer) }
        return writer.output
    }

    public static func decode(_ bytes: [UInt8]) throws(SecretsError) -> NodeTable {
        var reader = HandoverReader(bytes)
        var table = NodeTable()
        let highest = try reader.u64()
        let count = try reader.u64()
        for _ in 0..<count {
            table.apply(.node(try NodeRecord.decode(from: &reader)))
        }
        table.highestInode = max(table.highestInode, highest)
        try reader.finish()
        return table
    }
}

/// Little-endian fields: integers as 8 bytes, byte strings with a 4-byte length.
public struct HandoverWriter: Sendable {
    public private(set) var output: [UInt8] = []

    public init() {}

    public mutating func byte(_ value: UInt8) { output.append(value) }

    public mutating func u64(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { output.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    public mutating func bytes(_ value: [UInt8]) {
        let count = UInt32(truncatingIfNeeded: value.count)
        for shift in stride(from: 0, to: 32, by: 8) { output.append(UInt8(truncatingIfNeeded: count >> UInt32(shift))) }
        output += value
    }

    public mutating func string(_ value: String) { bytes(Array(value.utf8)) }

    mutating func optionalString(_ value: String?) {
        if let value {
            byte(1)
            string(value)
        } else {
            byte(0)
        }
    }
}

/// Reads what `HandoverWriter` wrote; any truncation or excess is an error, never a crash.
public struct HandoverReader: Sendable {
    let input: [UInt8]
    var position = 0

    public init(_ input: [UInt8]) { self.input = input }

    public mutating func byte() throws(SecretsError) -> UInt8 {
        guard position < input.count else { throw SecretsError(.invalidData, "handover message truncated") }
        defer { position += 1 }
        return input[position]
    }

    public mutating func u64() throws(SecretsError) -> UInt64 {
        guard input.count - position >= 8 else { throw SecretsError(.invalidData, "handover message truncated") }
        var value: UInt64 = 0
        for index in 0..<8 { value |= UInt64(input[position + index]) << UInt64(index * 8) }
        position += 8
        return value
    }

    public mutating func bytes() throws(SecretsError) -> [UInt8] {
        guard input.count - position >= 4 else { throw SecretsError(.invalidData, "handover message truncated") }
        var count = 0
        for index in 0..<4 { count |= Int(input[position + index]) << (index * 8) }
        position += 4
        guard input.count - position >= count else { throw SecretsError(.invalidData, "handover message truncated") }
        defer { position += count }
        return Array(input[position..<position + count])
    }

    public mutating func string() throws(SecretsError) -> String {
        let raw = try bytes()
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw SecretsError(.invalidData, "handover string is not UTF-8")
        }
        return text
    }

    mutating func optionalString() throws(SecretsError) -> String? {
        try byte() == 1 ? try string() : nil
    }

    public func finish() throws(SecretsError) {
        guard position == input.count else { throw SecretsError(.invalidData, "handover message has trailing bytes") }
    }
}
