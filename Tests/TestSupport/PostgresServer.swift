import Foundation

/// A real PostgreSQL server (Debian's `postgresql` package, `make deps`) in a private folder on 127.0.0.1 and a free
/// port: password (SCRAM) logins over TCP, trust for the superuser on its own Unix socket. PostgreSQL refuses to run
/// as root, so it runs as the `postgres` user the package creates (by `setpriv`). Stopped by PID.
public final class PostgresServer: @unchecked Sendable {
    public let dir: TemporaryDirectory
    public let port: Int
    private var process: Process?
    private let bin: String

    public init() throws {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.sorted(by: { (Int($0) ?? 0) < (Int($1) ?? 0) }).last,
            FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/\(version)/bin/postgres")
        else { throw TestFailure.message("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/postgres): run `make deps`") }
        bin = "/usr/lib/postgresql/\(version)/bin"
        guard let account = getpwnam("postgres") else { throw TestFailure.message("no 'postgres' user: run `make deps`") }
        dir = try TemporaryDirectory()
        port = try freePort()
        chown(dir.path, account.pointee.pw_uid, account.pointee.pw_gid)
        let initdb = try run(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", bin + "/initdb", "-D", dir.file("data"),
             "-U", "postgres", "-E", "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            timeout: 120)
        guard initdb.status == 0 else {
            dir.remove()
            throw TestFailure.message("initdb failed: \(initdb.stderr.suffix(500))")
        }
        try start()
    }

    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = [
            "--reuid=postgres", "--regid=postgres", "--clear-groups", bin + "/postgres", "-D", dir.file("data"),
            "-p", String(port), "-k", dir.path, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "logging_collector=off",
        ]
        let log = FileHandle(forWritingAtPath: "/dev/null")
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let answer = try? sql("SELECT 1"), answer.status == 0 { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        stop()
        throw TestFailure.message("PostgreSQL did not answer on port \(port)")
    }

    /// One statement as the superuser over the server's own socket (psql, with a timeout).
    @discardableResult
    public func sql(_ statement: String, database: String = "postgres") throws -> ProcessResult {
        try run(["psql", "-h", dir.path, "-p", String(port), "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1",
                 "-tAc", statement], timeout: 20)
    }

    /// A login role with `password` and a database it owns, both named `name` (a superuser: no database, for an
    /// engine that creates roles, as OpenBao's database engine does).
    public func createUser(_ name: String, password: String, superuser: Bool = false) throws {
        let literal = "'" + password.replacingOccurrences(of: "'", with: "''") + "'"
        let statements = superuser
            ? ["CREATE ROLE \"\(name)\" LOGIN SUPERUSER PASSWORD \(literal)"]
            : ["CREATE ROLE \"\(name)\" LOGIN PASSWORD \(literal)", "CREATE DATABASE \"\(name)\" OWNER \"\(name)\""]
        for statement in statements {
            let result = try sql(statement)
            guard result.status == 0 else { throw TestFailure.message("PostgreSQL: \(result.stderr.suffix(300))") }
        }
    }

    public func stop() {
        guard let process, process.isRunning else { return }
        // SIGINT: PostgreSQL's fast shutdown.
        stopProcess(process, SIGINT, grace: 10)
    }

    public func remove() {
        stop()
        dir.remove()
    }
}
