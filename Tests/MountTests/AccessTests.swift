import Foundation
import Testing
import TestSupport

/// `[[access]]` and `[audit]` through a real mount, with real callers: other uids (setpriv), processes in a cgroup
/// made for the test, other executables.
@Suite("access rules and audit", .serialized)
struct AccessTests {
    static let secrets = """
        [production]
        PASSWORD = "pw-secret-1"
        DB_HOST = "db-secret-2"
        API_KEY = "api-secret-3"
        OPEN = "open-secret-4"
        [development]
        PASSWORD = "dev-secret-5"
        """

    /// Everyone may walk and read by mode; the rules decide.
    func config(_ fixture: Fixture, rules: String) throws -> String {
        chmod(fixture.dir.path, 0o755)
        let config = try fixture.writeConfig(extra: rules)
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "[mount]\n", with: "[mount]\nallow_other = true\nfile_mode = \"0444\"\ndir_mode = \"0555\"\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        return config
    }

    /// Runs `cat path` as `uid` (nil: root), optionally inside cgroup folder `cgroup`; returns (status, output).
    func cat(_ path: String, uid: Int? = nil, cgroup: String? = nil, exe: String = "/bin/cat") throws -> (Int32, String) {
        var script = ""
        if let cgroup { script += "echo $$ > '\(cgroup)/cgroup.procs' && " }
        var command = [exe, path]
        if let uid {
            command = ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + command
        }
        script += "exec " + command.map { "'\($0)'" }.joined(separator: " ")
        let result = try run(["/bin/sh", "-c", script], timeout: 10)
        return (result.status, result.stdoutText + result.stderr)
    }

    @Test("per-path owners and modes: files from the first matching rule, directories so readers can walk to them")
    func ownersAndModes() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let fs = try fixture.mount(config: try config(fixture, rules: """
            [[access]]
            path = "local/production/DB_*"
            uid = 1234
            gid = 2345
            file_mode = "0440"
            dir_mode = "0550"

            [[access]]
            path = "*/*/*"
            file_mode = "0400"
            """))
        let db = try fs.status("local/production/DB_HOST")
        #expect(db.st_uid == 1234 && db.st_gid == 2345 && db.st_mode & 0o7777 == 0o440)
        let password = try fs.status("local/production/PASSWORD")
        #expect(password.st_uid == 0 && password.st_mode & 0o7777 == 0o400)
        let env = try fs.status("local/production")
        #expect(env.st_uid == 1234 && env.st_gid == 2345 && env.st_mode & 0o7777 == 0o550)
        let other = try fs.status("local/development")
        #expect(other.st_uid == 0 && other.st_mode & 0o7777 == 0o555)
        // check prints the effective owners and modes.
        let check = try fixture.cli(["check", "--config", fixture.dir.file("config.toml")])
        #expect(check.stdoutText.contains("production [1234:2345 550]"), "\(check.stdoutText)")
        #expect(check.stdoutText.contains("DB_HOST (1234:2345 440)"))
    }

    @Test("caller rules: uid, gid, cgroup, unit and exe allow; everyone else gets EACCES, every open asks again")
    func callers() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let group = try makeCgroup("secretsfs-test-\(getpid())")
        let unit = try makeCgroup("secretsfs-test-\(getpid())/billing.service")
        defer {
            rmdir(unit)
            rmdir(group)
        }
        let cgroupName = "/" + URL(fileURLWithPath: group).lastPathComponent
        let fs = try fixture.mount(config: try config(fixture, rules: """
            [[access]]
            path = "local/production/PASSWORD"
            allow = ["uid:65534"]

            [[access]]
            path = "local/production/DB_HOST"
            allow = ["unit:billing.service", "gid:4242"]

            [[access]]
            path = "local/production/API_KEY"
            allow = ["cgroup:\(cgroupName)", "exe:/usr/bin/head"]
            """))
        let password = fs.path("local/production/PASSWORD")
        #expect(try cat(password, uid: 65534) == (0, "pw-secret-1"))
        #expect(try cat(password, uid: 1001).0 != 0)
        #expect(try cat(password).1.contains("Permission denied"), "root is a caller like any other")
        // Allowed once does not open the door for the next caller: every open is checked.
        #expect(try cat(password, uid: 65534) == (0, "pw-secret-1"))
        #expect(try cat(password, uid: 1001).1.contains("Permission denied"))

        let db = fs.path("local/production/DB_HOST")
        #expect(try cat(db, cgroup: unit) == (0, "db-secret-2"))
        #expect(try cat(db, cgroup: group).0 != 0, "the parent cgroup is not the unit")
        #expect(try cat(db, uid: 4242).0 == 0, "gid 4242 (setpriv sets uid and gid)")
        #expect(try cat(db).0 != 0)

        let api = fs.path("local/production/API_KEY")
        #expect(try cat(api, cgroup: group).0 == 0)
        #expect(try cat(api, cgroup: unit).0 == 0, "a cgroup rule is a prefix: child cgroups match")
        #expect(try cat(api, exe: "/usr/bin/head") == (0, "api-secret-3"))
        #expect(try cat(api).0 != 0)
        // No rule: the modes decide.
        #expect(try cat(fs.path("local/production/OPEN"), uid: 1001) == (0, "open-secret-4"))
        #expect(!fs.log.contains("pw-secret-1") && !fs.log.contains("api-secret-3"))
    }

    @Test("audit: one JSON line per decision with pid, uid, exe and cache state, never a value; get too; SIGUSR1 reopens")
    func audit() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let auditPath = fixture.dir.file("audit.jsonl")
        let config = try config(fixture, rules: """
            [[access]]
            path = "local/production/PASSWORD"
            allow = ["uid:65534"]

            [audit]
            path = "\(auditPath)"
            paths = ["local/production/*"]
            """)
        let fs = try fixture.mount(config: config)
        let password = fs.path("local/production/PASSWORD")
        let allowed = try run(["/bin/sh", "-c", "echo $$; exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups /bin/cat '\(password)'"], timeout: 10)
        let allowedPid = allowed.stdoutText.split(separator: "\n").first.map(String.init) ?? ""
        let denied = try run(["/bin/sh", "-c", "echo $$; exec /bin/cat '\(password)'"], timeout: 10)
        let deniedPid = denied.stdoutText.split(separator: "\n").first.map(String.init) ?? ""
        #expect(try cat(fs.path("local/production/OPEN")).0 == 0)
        #expect(try cat(fs.path("local/production/NOPE")).0 != 0)
        #expect(try cat(fs.path("local/development/PASSWORD")).0 == 0, "not audited")
        let got = try fixture.cli(["get", "--config", config, "local/production/OPEN"])
        #expect(got.status == 0)

        var info = stat()
        stat(auditPath, &info)
        #expect(info.st_mode & 0o777 == 0o600)
        let lines = try String(contentsOfFile: auditPath, encoding: .utf8).split(separator: "\n").map(String.init)
        func entries(_ path: String) -> [[String: Any]] {
            lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["path"] as? String == path }
        }
        let passwordEntries = entries("local/production/PASSWORD")
        let allowedEntry = passwordEntries.first { $0["decision"] as? String == "allowed" }
        #expect(allowedEntry?["uid"] as? Int == 65534)
        #expect(allowedEntry.map { "\($0["pid"] ?? "")" } == allowedPid)
        #expect(allowedEntry?["exe"] as? String == "/usr/bin/cat")
        #expect(allowedEntry?["cache"] as? String == "cached")
        let deniedEntry = passwordEntries.first { $0["decision"] as? String == "denied" }
        #expect(deniedEntry?["uid"] as? Int == 0)
        #expect(deniedEntry.map { "\($0["pid"] ?? "")" } == deniedPid)
        #expect(entries("local/production/NOPE").first?["decision"] as? String == "not found")
        #expect(entries("local/production/OPEN").contains { $0["via"] as? String == "get" })
        #expect(entries("local/development/PASSWORD").isEmpty)
        let whole = lines.joined(separator: "\n")
        for value in ["pw-secret-1", "open-secret-4", "dev-secret-5"] { #expect(!whole.contains(value)) }

        // logrotate: move the file away, SIGUSR1, the next decision goes to a new file.
        rename(auditPath, auditPath + ".1")
        kill(fs.process.processIdentifier, SIGUSR1)
        try fs.waitForLog("audit log reopened")
        #expect(try cat(fs.path("local/production/OPEN")).0 == 0)
        let reopened = (try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? ""
        #expect(reopened.contains("local/production/OPEN"))
    }

    @Test("bad rules name file and line and exit 2; a rule that matches no store is a warning")
    func badRules() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let unknownKind = try fixture.writeConfig(extra: "[[access]]\npath = \"local/production/*\"\nallow = [\"pod:x\"]\n")
        let result = try fixture.cli(["check", "--config", unknownKind])
        #expect(result.status == 2)
        #expect(result.stderr.contains("config.toml:") && result.stderr.contains("'pod:x' is not a caller"), "\(result.stderr)")
        let shortPath = try fixture.writeConfig(extra: "[[access]]\npath = \"local/*\"\n")
        let short = try fixture.cli(["mount", "--config", shortPath])
        #expect(short.status == 2 && short.stderr.contains("<store or scope>/<env>/<key>"))
        let typo = try fixture.writeConfig(extra: "[[access]]\npath = \"lcoal/*/*\"\nallow = [\"uid:0\"]\n")
        let fs = try fixture.mount(config: typo)
        #expect(try fs.readText("local/production/OPEN") == "open-secret-4")
        try fs.waitForLog("access rule matches no store or scope")
    }
}
