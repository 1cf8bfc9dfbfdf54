import Foundation

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
public func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure.message("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard bind(fd, pointer, length) == 0 else { return -1 }
            return getsockname(fd, pointer, &length)
        }
    }
    guard bound == 0 else { throw TestFailure.message("bind failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// TLS material made by the test with `openssl`: a CA and a server certificate for 127.0.0.1.
public struct TLSFiles: Sendable {
    public let ca: String
    public let certificate: String
    public let key: String

    public init(in dir: TemporaryDirectory) throws {
        let openssl = try requireTool("openssl")
        ca = dir.file("ca.crt")
        certificate = dir.file("server.crt")
        key = dir.file("server.key")
        let caKey = dir.file("ca.key")
        let request = dir.file("server.csr")
        let extensions = try dir.write("ext.cnf", "subjectAltName = IP:127.0.0.1, DNS:localhost\n")
        let steps: [[String]] = [
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", ca, "-days", "2",
             "-subj", "/CN=secretsfs test CA"],
            [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
            [openssl, "x509", "-req", "-in", request, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", certificate,
             "-days", "2", "-extfile", extensions],
        ]
        for step in steps {
            let result = try run(step, timeout: 60)
            guard result.status == 0 else { throw TestFailure.message("openssl failed: \(result.stderr)") }
        }
    }
}

/// A real `redis-server` on 127.0.0.1 and a free port, stopped by PID. Fails loudly when redis-server is missing.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let dir: TemporaryDirectory
    public let tls: TLSFiles?
    private let arguments: [String]
    private var process: Process?
    private let serverPath: String
    private let cliPath: String

    /// `notifications`: the notify-keyspace-events flags ("" turns them off).
    public init(notifications: String = "Kh", tls useTLS: Bool = false, extra: [String] = []) throws {
        serverPath = try requireTool("redis-server")
        cliPath = try requireTool("redis-cli")
        dir = try TemporaryDirectory()
        port = try freePort()
        tls = useTLS ? try TLSFiles(in: dir) : nil
        var arguments = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir.path,
                         "--notify-keyspace-events", notifications, "--daemonize", "no", "--logfile", dir.file("redis.log")]
        if let tls {
            arguments += ["--port", "0", "--tls-port", String(port), "--tls-cert-file", tls.certificate,
                          "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.ca, "--tls-auth-clients", "no"]
        } else {
            arguments += ["--port", String(port)]
        }
        self.arguments = arguments + extra
        try start()
    }

    public var url: String { "\(tls == nil ? "redis" : "rediss")://127.0.0.1:\(port)/0" }

    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: serverPath)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let reply = try? cli(["PING"]), reply.stdoutText.contains("PONG") { return }
            if !process.isRunning { break }
            usleep(20_000)
        }
        stop()
        let log = (try? String(contentsOfFile: dir.file("redis.log"), encoding: .utf8)) ?? ""
        throw TestFailure.message("redis-server did not answer on port \(port):\n\(log)")
    }

    /// redis-cli against this server (plain or TLS), with a timeout.
    public func cli(_ command: [String], user: String? = nil, password: String? = nil) throws -> ProcessResult {
        var argv = [cliPath, "-h", "127.0.0.1", "-p", String(port)]
        if let tls { argv += ["--tls", "--cacert", tls.ca] }
        if let user { argv += ["--user", user] }
        if let password { argv += ["--pass", password, "--no-auth-warning"] }
        return try run(argv + command, timeout: 10)
    }

    /// HSET with exact bytes for each value.
    public func hset(_ hash: String, _ fields: [(String, String)]) throws {
        let result = try cli(["HSET", hash] + fields.flatMap { [$0.0, $0.1] })
        guard result.status == 0, !result.stdoutText.contains("ERR") else {
            throw TestFailure.message("HSET failed: \(result.stdoutText) \(result.stderr)")
        }
    }

    /// Waits until some client has subscribed to at least `count` patterns (`PUBSUB NUMPAT`): a keyspace watcher
    /// listens, so a change made now reaches it.
    public func waitForPatternSubscriptions(_ count: Int = 1, seconds: Double = 15) throws {
        try waitUntil("\(count) pattern subscription(s) on redis :\(port)", seconds: seconds, every: 0.02) {
            guard let answer = try? cli(["PUBSUB", "NUMPAT"]), answer.status == 0 else { return false }
            return (Int(answer.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= count
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, like a hung backend.
    public func pause() { signalServer(process, SIGSTOP) }

    /// Lets a paused server run again (SIGCONT).
    public func resume() { signalServer(process, SIGCONT) }

    /// Kills the server at once (SIGKILL): a crashed node.
    public func crash() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Stops the server: SHUTDOWN NOSAVE (a child of the test process may have SIGTERM blocked), then SIGKILL by
    /// PID if it is still there.
    public func stop() {
        guard let process, process.isRunning else { return }
        resume()
        _ = try? cli(["SHUTDOWN", "NOSAVE"])
        stopProcess(process, SIGTERM, grace: 2)
    }

    public func remove() {
        stop()
        dir.remove()
    }
}
