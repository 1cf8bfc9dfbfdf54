import SecretsCore

/// Everything a supervisor knows, as it hands it to the image it re-executes into (SIGUSR2) through a memfd: the
/// connection, the recorded FUSE_INIT, the digest key, the config, the running worker and the node table. Never a
/// value. Written in the version the new binary reads (it is asked first); read in any version this one knows.
public struct SupervisorState: Sendable, Equatable {
    public struct RunningWorker: Sendable, Equatable {
        public var pid: Int32
        public var channelFD: Int32
        public var serving: Bool
        /// The protocol its channel speaks (a version-0 state cannot say: its workers spoke 0).
        public var protocolVersion: UInt16
        /// The descriptor of its in-flight page (`InflightPage`), -1 when it has none (states before version 2).
        public var inflightFD: Int32

        public init(pid: Int32, channelFD: Int32, serving: Bool, protocolVersion: UInt16, inflightFD: Int32 = -1) {
            self.pid = pid
            self.channelFD = channelFD
            self.serving = serving
            self.protocolVersion = protocolVersion
            self.inflightFD = inflightFD
        }
    }

    public var fuseFD: Int32
    public var mountPath: String
    public var initRequest: [UInt8]
    public var digestKey: [UInt8]
    public var configPath: String
    public var configText: String
    public var noOpen: Bool
    public var logLevel: String
    public var everServed: Bool
    public var worker: RunningWorker?
    public var restarts: UInt64
    public var table: NodeTable
    /// The memfd workers keep their encrypted last-known-good snapshot in (`ViewSnapshot`); the supervisor passes it
    /// on and never reads it. -1: none (states before version 2).
    public var snapshotFD: Int32 = -1
    /// fusermount3's auto_unmount sockets (the mount goes when every holder of them is gone), not close-on-exec:
    /// a process that takes the mount over must hold them too. Empty in states before version 3.
    public var unmountSockets: [Int32] = []

    public init(
        fuseFD: Int32, mountPath: String, initRequest: [UInt8], digestKey: [UInt8], configPath: String,
        configText: String, noOpen: Bool, logLevel: String, everServed: Bool = false, worker: RunningWorker? = nil,
        restarts: UInt64 = 0, table: NodeTable = NodeTable()
    ) {
        self.fuseFD = fuseFD
        self.mountPath = mountPath
        self.initRequest = initRequest
        self.digestKey = digestKey
        self.configPath = configPath
        self.configText = configText
        self.noOpen = noOpen
        self.logLevel = logLevel
        self.everServed = everServed
        self.worker = worker
        self.restarts = restarts
        self.table = table
    }

    /// Version 0 is the layout of the releases before versions (no magic, the same fields in the same order, no
    /// worker version); version 1 adds the magic and version in front and the worker's protocol version; version 2
    /// the descriptors of the worker's in-flight page and of the workers' snapshot; version 3 fusermount3's sockets.
    public func encoded(version: UInt16 = HandoverProtocol.current) -> [UInt8] {
        var writer = HandoverWriter()
        if version >= 1 {
            writer.raw(HandoverProtocol.stateMagic)
            writer.u16(version)
        }
        writer.u64(UInt64(bitPattern: Int64(fuseFD)))
        writer.string(mountPath)
        writer.bytes(initRequest)
        writer.bytes(digestKey)
        writer.string(configPath)
        writer.string(configText)
        writer.bool(noOpen)
        writer.string(logLevel)
        writer.bool(everServed)
        writer.u64(UInt64(bitPattern: Int64(worker?.pid ?? 0)))
        writer.u64(UInt64(bitPattern: Int64(worker?.channelFD ?? -1)))
        writer.bool(worker?.serving == true)
        writer.u64(restarts)
        writer.bytes(table.encoded())
        if version >= 1 { writer.u16(worker?.protocolVersion ?? 0) }
        if version >= 2 {
            writer.u64(UInt64(bitPattern: Int64(worker?.inflightFD ?? -1)))
            writer.u64(UInt64(bitPattern: Int64(snapshotFD)))
        }
        if version >= 3 {
            writer.u64(UInt64(unmountSockets.count))
            for fd in unmountSockets { writer.u64(UInt64(bitPattern: Int64(fd))) }
        }
        return writer.output
    }

    /// The state and the version it was written in; a version this binary does not know is refused by name.
    public static func decode(
        _ bytes: [UInt8], supported: ClosedRange<UInt16> = HandoverProtocol.supported
    ) throws(SecretsError) -> (SupervisorState, UInt16) {
        var reader = HandoverReader(bytes)
        var version: UInt16 = 0
        if reader.skip(prefix: HandoverProtocol.stateMagic) {
            version = try reader.u16()
        }
        guard supported.contains(version) else {
            throw SecretsError(
                .unsupported,
                "the supervisor state is of version \(version); this binary reads \(supported.lowerBound) to \(supported.upperBound)")
        }
        let fuseFD = Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))
        var state = SupervisorState(
            fuseFD: fuseFD, mountPath: try reader.string(), initRequest: try reader.bytes(),
            digestKey: try reader.bytes(), configPath: try reader.string(), configText: try reader.string(),
            noOpen: try reader.bool(), logLevel: try reader.string(), everServed: try reader.bool())
        let pid = Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))
        let channelFD = Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))
        let serving = try reader.bool()
        state.restarts = try reader.u64()
        state.table = try NodeTable.decode(try reader.bytes())
        let workerVersion = version >= 1 ? try reader.u16() : 0
        let inflightFD = version >= 2 ? Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64())) : -1
        state.snapshotFD = version >= 2 ? Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64())) : -1
        if version >= 3 {
            let count = try reader.u64()
            guard count <= 16 else { throw SecretsError(.invalidData, "the supervisor state names \(count) unmount sockets") }
            for _ in 0..<count { state.unmountSockets.append(Int32(truncatingIfNeeded: Int64(bitPattern: try reader.u64()))) }
        }
        try reader.finish()
        if pid > 0 && channelFD >= 0 {
            state.worker = RunningWorker(
                pid: pid, channelFD: channelFD, serving: serving, protocolVersion: workerVersion, inflightFD: inflightFD)
        }
        return (state, version)
    }
}
