import Foundation

/// Redis as it runs in production, on 127.0.0.1: a master, a replica and three sentinels (`redis-server
/// --sentinel`) watching `mymaster` (down after 1 s), keyspace notifications on both data nodes. Every process
/// stopped by PID.
public final class RedisSentinelSet: @unchecked Sendable {
    public static let masterName = "mymaster"
    public let master: RedisServer
    public let replica: RedisServer
    public let dir: TemporaryDirectory
    /// The sentinels' own password (`requirepass`), when they have one.
    public let sentinelPassword: String?
    public private(set) var sentinelPorts: [Int] = []
    private var sentinels: [Process] = []
    private let serverPath: String
    private let cliPath: String

    public init(sentinelPassword: String? = nil) throws {
        self.sentinelPassword = sentinelPassword
        serverPath = try requireTool("redis-server")
        cliPath = try requireTool("redis-cli")
        dir = try TemporaryDirectory()
        master = try RedisServer()
        do {
            replica = try RedisServer(extra: ["--replicaof", "127.0.0.1", String(master.port)])
        } catch {
            master.remove()
            throw error
        }
        do {
            for _ in 0..<3 { try startSentinel() }
            try waitFor("the replica in sync", seconds: 20) {
                (try? self.replica.cli(["INFO", "replication"]).stdoutText.contains("master_link_status:up")) ?? false
            }
            // A failover needs sentinels that know each other and the replica (hello messages every 2 s).
            try waitFor("sentinels that know each other and the replica", seconds: 30) {
                self.sentinelPorts.allSatisfy { port in
                    let others = (try? self.sentinelCLI(port, ["SENTINEL", "sentinels", Self.masterName]).stdoutText) ?? ""
                    let replicas = (try? self.sentinelCLI(port, ["SENTINEL", "replicas", Self.masterName]).stdoutText) ?? ""
                    let knownSentinels = others.split(separator: "\n").filter { $0 == "name" }.count
                    return knownSentinels >= 2 && replicas.split(separator: "\n").contains { $0 == String(self.replica.port) }
                }
            }
        } catch {
            remove()
            throw error
        }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster/0`
    public var url: String {
        "redis+sentinel://" + sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "/\(Self.masterName)/0"
    }

    private func startSentinel() throws {
        let port = try freePort()
        let config = """
            port \(port)
            bind 127.0.0.1
            daemonize no
            dir \(dir.path)
            logfile \(dir.file("sentinel-\(port).log"))
            sentinel monitor \(Self.masterName) 127.0.0.1 \(master.port) 2
            sentinel down-after-milliseconds \(Self.masterName) 1000
            sentinel failover-timeout \(Self.masterName) 3000
            sentinel parallel-syncs \(Self.masterName) 1
            \(sentinelPassword.map { "requirepass \($0)\nsentinel sentinel-pass \($0)" } ?? "")

            """
        let path = try dir.write("sentinel-\(port).conf", config)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: serverPath)
        process.arguments = [path, "--sentinel"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        sentinels.append(process)
        sentinelPorts.append(port)
        try waitFor("sentinel on \(port)", seconds: 10) {
            (try? self.sentinelCLI(port, ["PING"]).stdoutText.contains("PONG")) ?? false
        }
    }

    public func sentinelCLI(_ port: Int, _ command: [String]) throws -> ProcessResult {
        let auth = sentinelPassword.map { ["-a", $0, "--no-auth-warning"] } ?? []
        return try run([cliPath, "-h", "127.0.0.1", "-p", String(port)] + auth + command, timeout: 10)
    }

    /// The master's port as the first sentinel reports it (0 when it cannot say).
    public func reportedMasterPort() -> Int {
        guard let port = sentinelPorts.first,
            let reply = try? sentinelCLI(port, ["SENTINEL", "get-master-addr-by-name", Self.masterName])
        else { return 0 }
        let lines = reply.stdoutText.split(separator: "\n")
        return lines.count == 2 ? Int(lines[1]) ?? 0 : 0
    }

    /// Waits until the sentinels have promoted the replica and it says it is a master.
    public func waitForPromotion(seconds: Double = 30) throws {
        try waitFor("the replica promoted", seconds: seconds) {
            self.reportedMasterPort() == self.replica.port
                && ((try? self.replica.cli(["ROLE"]).stdoutText.hasPrefix("master")) ?? false)
        }
    }

    func waitFor(_ what: String, seconds: Double, _ condition: () -> Bool) throws {
        try waitUntil(what, seconds: seconds, every: 0.1, condition)
    }

    /// The sentinels' own logs (failover steps with timestamps; they never hold a value), for a failure message.
    public func debugLogs() -> String {
        sentinelPorts.map { port in
            "sentinel \(port):\n" + ((try? String(contentsOfFile: dir.file("sentinel-\(port).log"), encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }

    public func remove() {
        for process in sentinels where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        master.remove()
        replica.remove()
        dir.remove()
    }
}
