import Foundation

/// A real OpenBao HA cluster on 127.0.0.1: three `bao server` processes with integrated Raft storage, initialized
/// (one unseal key), unsealed and joined by this harness, KV v2 at `secret/`; every process stopped by PID.
public final class BaoCluster: @unchecked Sendable {
    public final class Node: @unchecked Sendable {
        public let name: String
        public let port: Int
        public let clusterPort: Int
        let dir: TemporaryDirectory
        let binary: String
        var process: Process?

        init(name: String, dir: TemporaryDirectory, binary: String) throws {
            self.name = name
            self.dir = dir
            self.binary = binary
            port = try freePort()
            clusterPort = try freePort()
        }

        public var address: String { "http://127.0.0.1:\(port)" }
        public var pid: Int32? { process?.processIdentifier }
        public var isRunning: Bool { process?.isRunning ?? false }

        func start() throws {
            let data = dir.file("data-\(name)")
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            let config = """
                storage "raft" {
                  node_id = "\(name)"
                  path = "\(data)"
                  performance_multiplier = 1
                }
                listener "tcp" {
                  address = "127.0.0.1:\(port)"
                  cluster_address = "127.0.0.1:\(clusterPort)"
                  tls_disable = true
                }
                api_addr = "http://127.0.0.1:\(port)"
                cluster_addr = "http://127.0.0.1:\(clusterPort)"
                disable_mlock = true
                """
            try config.write(toFile: dir.file("\(name).hcl"), atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["server", "-config=\(dir.file("\(name).hcl"))"]
            process.environment = ["HOME": dir.path, "PATH": "/usr/bin:/bin"]
            let logPath = dir.file("\(name).log")
            if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
            let log = FileHandle(forWritingAtPath: logPath)
            log?.seekToEndOfFile()
            process.standardOutput = log ?? FileHandle.nullDevice
            process.standardError = log ?? FileHandle.nullDevice
            try process.run()
            self.process = process
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                // 501 not initialized, 503 sealed, 429 standby, 200 active: any answer means it listens.
                if health() != 0 { return }
                guard process.isRunning else { break }
                usleep(50_000)
            }
            throw TestFailure.message("bao server \(name) did not answer on port \(port): \(tail())")
        }

        /// `GET /v1/sys/health`'s status: 200 active, 429 standby, 503 sealed, 501 not initialized, 0 no answer.
        public func health() -> Int {
            guard let result = try? run(
                ["/usr/bin/curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", address + "/v1/sys/health"],
                timeout: 5)
            else { return 0 }
            return Int(result.stdoutText) ?? 0
        }

        func tail() -> String {
            String(((try? String(contentsOfFile: dir.file("\(name).log"), encoding: .utf8)) ?? "").suffix(3000))
        }

        /// SIGTERM (a clean shutdown: the leader steps down) or SIGKILL; waits until the process is gone.
        public func stop(_ signal: Int32 = SIGKILL) {
            guard let process else { return }
            stopProcess(process, signal, grace: 15)
        }
    }

    public let dir: TemporaryDirectory
    public let binary: String
    public private(set) var nodes: [Node] = []
    public private(set) var rootToken = ""
    private var unsealKey = ""

    public init() throws {
        binary = try baoBinary()
        _ = try requireTool("curl")
        dir = try TemporaryDirectory()
        do {
            try build()
        } catch {
            let logs = nodes.map { "\($0.name): \($0.tail())" }.joined(separator: "\n")
            remove()
            throw TestFailure.message("the OpenBao cluster did not form: \(error)\n\(logs)")
        }
    }

    private func build() throws {
        for index in 1...3 { nodes.append(try Node(name: "n\(index)", dir: dir, binary: binary)) }
        for node in nodes { try node.start() }
        let initialized = try cli(nodes[0], ["operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"], token: nil)
        guard let json = try JSONSerialization.jsonObject(with: Data(initialized.stdoutText.utf8)) as? [String: Any],
            let keys = json["unseal_keys_b64"] as? [String], let key = keys.first, let token = json["root_token"] as? String
        else { throw TestFailure.message("bao operator init printed no keys") }
        unsealKey = key
        rootToken = token
        try unseal(nodes[0])
        try waitFor("n1 active", seconds: 30) { self.nodes[0].health() == 200 }
        // Joiners become voters once autopilot finds them stable (10 s by default): shorten that.
        _ = try cli(nodes[0], ["write", "sys/storage/raft/autopilot/configuration", "server_stabilization_time=1s"])
        for node in nodes.dropFirst() {
            _ = try cli(node, ["operator", "raft", "join", nodes[0].address], token: nil)
            try unseal(node)
        }
        _ = try cli(nodes[0], ["secrets", "enable", "-version=2", "-path=secret", "kv"])
        // Kill a leader before every node votes and no election happens: wait for three voters.
        try waitFor("three raft voters", seconds: 60) { self.voters() == 3 }
        try waitFor("two standbys", seconds: 30) { self.nodes.dropFirst().allSatisfy { $0.health() == 429 } }
    }

    public func unseal(_ node: Node) throws {
        _ = try cli(node, ["operator", "unseal", unsealKey], token: nil)
    }

    /// Seals one node (root token, sys/seal on that node).
    public func seal(_ node: Node) throws {
        _ = try cli(node, ["operator", "seal"])
    }

    /// The voters `bao operator raft list-peers` reports (0 when it cannot ask).
    public func voters() -> Int {
        guard let leader = active(),
            let result = try? cli(leader, ["operator", "raft", "list-peers", "-format=json"]),
            let json = try? JSONSerialization.jsonObject(with: Data(result.stdoutText.utf8)) as? [String: Any],
            let data = json["data"] as? [String: Any], let config = data["config"] as? [String: Any],
            let servers = config["servers"] as? [[String: Any]]
        else { return 0 }
        return servers.filter { $0["voter"] as? Bool == true }.count
    }

    /// The active node, if one answers as active.
    public func active() -> Node? {
        nodes.first { $0.isRunning && $0.health() == 200 }
    }

    /// Waits until another node than `old` is active; returns it.
    public func waitForNewLeader(after old: Node, seconds: Double = 60) throws -> Node {
        var found: Node?
        try waitFor("a new active node", seconds: seconds) {
            found = self.nodes.first { $0 !== old && $0.isRunning && $0.health() == 200 }
            return found != nil
        }
        guard let found else { throw TestFailure.message("no new leader") }
        return found
    }

    /// The bao CLI against one node (root token unless `token` is nil).
    @discardableResult
    public func cli(_ node: Node, _ arguments: [String], token: String?? = .none) throws -> ProcessResult {
        var environment = ["BAO_ADDR": node.address, "HOME": dir.path]
        switch token {
        case .none: environment["BAO_TOKEN"] = rootToken
        case .some(let given?): environment["BAO_TOKEN"] = given
        case .some(nil): break
        }
        let result = try run([binary] + arguments, environment: environment, timeout: 30)
        guard result.status == 0 else {
            throw TestFailure.message("bao \(arguments.prefix(3).joined(separator: " ")) on \(node.name) failed: \(result.stderr)")
        }
        return result
    }

    func waitFor(_ what: String, seconds: Double, _ condition: () -> Bool) throws {
        try waitUntil(what, seconds: seconds, every: 0.2, condition)
    }

    public func remove() {
        for node in nodes { node.stop() }
        dir.remove()
    }
}
