import SecretsCore

/// What the supervisor and its workers say to each other over their control socket (a SOCK_SEQPACKET pair, one
/// message a packet). Never a secret value: file nodes carry a path, a size, a time and a keyed digest.
/// Versions 0 and 1 encode messages the same way; `version` is there for the first one that does not.
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
        public var restarts: UInt64

        public init(
            digestKey: [UInt8], initRequest: [UInt8], configPath: String, configText: String, reload: Bool,
            noOpen: Bool, mountPath: String, restarts: UInt64 = 0
        ) {
            self.digestKey = digestKey
            self.initRequest = initRequest
            self.configPath = configPath
            self.configText = configText
            self.reload = reload
            self.noOpen = noOpen
            self.mountPath = mountPath
            self.restarts = restarts
        }
    }

    public func encoded(version: UInt16 = HandoverProtocol.current) -> [UInt8] {
        var writer = HandoverWriter()
        switch self {
        case .hello(let hello):
            writer.byte(1)
            writer.bytes(hello.digestKey)
            writer.bytes(hello.initRequest)
            writer.string(hello.configPath)
            writer.string(hello.configText)
            writer.bool(hello.reload)
            writer.bool(hello.noOpen)
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

    public static func decode(
        _ bytes: [UInt8], version: UInt16 = HandoverProtocol.current
    ) throws(SecretsError) -> HandoverMessage {
        var reader = HandoverReader(bytes)
        let message: HandoverMessage
        switch try reader.byte() {
        case 1:
            message = .hello(
                Hello(
                    digestKey: try reader.bytes(), initRequest: try reader.bytes(), configPath: try reader.string(),
                    configText: try reader.string(), reload: try reader.bool(), noOpen: try reader.bool(),
                    mountPath: try reader.string(), restarts: try reader.u64()))
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

extension NodeRecord {
    func encode(into writer: inout HandoverWriter) {
        switch self {
        case .directory(let inode, let top, let env):
            writer.byte(1)
            writer.u64(inode)
            writer.optionalString(top)
            writer.optionalString(env)
        case .file(let file):
            // Version 3: a node of a CSI volume's view is tag 3, tag 2's fields then the volume id.
            writer.byte(file.view.isEmpty ? 2 : 3)
            writer.u64(file.inode)
            writer.u64(file.parent)
            writer.string(file.top)
            writer.string(file.env)
            writer.string(file.key)
            writer.u64(UInt64(file.size))
            writer.u64(UInt64(bitPattern: Int64(file.modifiedSeconds)))
            writer.u64(UInt64(file.modifiedNanoseconds))
            writer.bytes(file.digest)
            if !file.view.isEmpty { writer.string(file.view) }
        case .volume(let inode, let volume):
            writer.byte(4)
            writer.u64(inode)
            writer.bool(volume != nil)
            if let volume {
                writer.string(volume.id)
                writer.string(volume.top)
                writer.string(volume.env)
                writer.u64(UInt64(volume.keys.count))
                for key in volume.keys { writer.string(key) }
                writer.string(volume.pod.uid)
                writer.string(volume.pod.name)
                writer.string(volume.pod.namespace)
                writer.string(volume.pod.serviceAccount)
                writer.bool(volume.group != nil)
                writer.u64(UInt64(volume.group ?? 0))
                writer.string(volume.targetPath)
            }
        }
    }

    static func decode(from reader: inout HandoverReader) throws(SecretsError) -> NodeRecord {
        switch try reader.byte() {
        case 1:
            let inode = try reader.u64()
            return .directory(inode: inode, top: try reader.optionalString(), env: try reader.optionalString())
        case let tag where tag == 2 || tag == 3:
            let inode = try reader.u64()
            let parent = try reader.u64()
            let top = try reader.string()
            let env = try reader.string()
            let key = try reader.string()
            let size = try reader.u64()
            let seconds = Int64(bitPattern: try reader.u64())
            let nanoseconds = try reader.u64()
            let digest = try reader.bytes()
            let view = tag == 3 ? try reader.string() : ""
            guard size <= UInt64(Int32.max), nanoseconds < 1_000_000_000 else {
                throw SecretsError(.invalidData, "file node \(inode) has an impossible size or time")
            }
            return .file(
                FileRecord(
                    inode: inode, parent: parent, top: top, env: env, key: key, size: Int(size),
                    modifiedSeconds: Int(seconds), modifiedNanoseconds: Int(nanoseconds), digest: digest, view: view))
        case 4:
            let inode = try reader.u64()
            guard try reader.bool() else { return .volume(inode: inode, nil) }
            let id = try reader.string()
            let top = try reader.string()
            let env = try reader.string()
            let count = try reader.u64()
            guard count <= 1024 else { throw SecretsError(.invalidData, "volume \(inode) has \(count) key globs") }
            var keys: [String] = []
            for _ in 0..<count { keys.append(try reader.string()) }
            let pod = PodIdentity(
                uid: try reader.string(), name: try reader.string(), namespace: try reader.string(),
                serviceAccount: try reader.string())
            let hasGroup = try reader.bool()
            let group = try reader.u64()
            guard group <= UInt64(UInt32.max) else { throw SecretsError(.invalidData, "volume \(inode) has an impossible group") }
            return .volume(
                inode: inode,
                CSIVolume(
                    id: id, top: top, env: env, keys: keys, pod: pod, group: hasGroup ? UInt32(group) : nil,
                    targetPath: try reader.string()))
        case let tag:
            throw SecretsError(.invalidData, "unknown node record \(tag)")
        }
    }
}

/// The node table as the supervisor keeps it: every directory, every file node the kernel has not forgotten, and
/// the highest id ever issued (ids are never reused on one connection).
public struct NodeTable: Sendable, Equatable {
    public private(set) var nodes: [UInt64: NodeRecord] = [:]
    public private(set) var highestInode: UInt64 = InodeTable.rootInode

    public init() {}

    /// Whether any CSI volume is published (its records need handover protocol 3).
    public var holdsVolumes: Bool {
        nodes.values.contains { if case .volume(_, _?) = $0 { return true } else { return false } }
    }

    public mutating func apply(_ message: HandoverMessage) {
        switch message {
        case .node(let record): apply(.issued(record))
        case .removed(let inode): apply(.forgotten(inode))
        default: break
        }
    }

    public mutating func apply(_ event: NodeEvent) {
        switch event {
        case .issued(let record):
            nodes[record.inode] = record
            highestInode = max(highestInode, record.inode)
        case .forgotten(let inode):
            // Directories stay: a bind mount may hold one. A volume's view goes when it is unpublished.
            switch nodes[inode] {
            case .file?, .volume(_, _?)?: nodes.removeValue(forKey: inode)
            default: break
            }
        }
    }

    /// The records in id order, directories first so a file's parent is always known before it.
    public var records: [NodeRecord] {
        nodes.values.sorted { lhs, rhs in
            switch (lhs, rhs) {
            case (.directory, .file), (.volume, .file): return true
            case (.file, .directory), (.file, .volume): return false
            default: return lhs.inode < rhs.inode
            }
        }
    }

    func encode(into writer: inout HandoverWriter) {
        writer.u64(highestInode)
        writer.u64(UInt64(nodes.count))
        for record in records { record.encode(into: &writer) }
    }

    static func decode(from reader: inout HandoverReader) throws(SecretsError) -> NodeTable {
        var table = NodeTable()
        let highest = try reader.u64()
        let count = try reader.u64()
        for _ in 0..<count { table.apply(.issued(try NodeRecord.decode(from: &reader))) }
        table.highestInode = max(table.highestInode, highest)
        return table
    }

    /// The whole table as bytes (a field of the re-exec state).
    public func encoded() -> [UInt8] {
        var writer = HandoverWriter()
        encode(into: &writer)
        return writer.output
    }

    public static func decode(_ bytes: [UInt8]) throws(SecretsError) -> NodeTable {
        var reader = HandoverReader(bytes)
        let table = try decode(from: &reader)
        try reader.finish()
        return table
    }
}
