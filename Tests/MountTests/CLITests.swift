import Foundation
import Testing
import TestSupport

@Suite("command line")
struct CLITests {
    @Test("every command documents itself", arguments: ["mount", "get", "run", "status", "check", "keygen", "encrypt", "decrypt", "edit", "set", "write", "import", "watch"])
    func help(command: String) throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let result = try fixture.cli([command, "--help"])
        #expect(result.status == 0)
        #expect(result.stdoutText.contains("USAGE: secretsfs \(command)"))
        #expect(result.stdoutText.count > 300, "help for \(command) is too thin")
    }

    @Test("mount's help documents reload, re-exec and failover; the internal worker command is hidden and refuses to run alone")
    func supervisorHelp() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let help = try fixture.cli(["mount", "--help"]).stdoutText
        for word in ["SIGHUP", "SIGUSR2", "worker", "ENOTCONN", "READY=1"] {
            #expect(help.contains(word), "mount --help does not mention \(word)")
        }
        #expect(!help.contains("resume-state"))
        #expect(!(try fixture.cli(["--help"]).stdoutText.contains("worker")))
        #expect(try fixture.cli(["worker", "--help"]).stdoutText.contains("USAGE: secretsfs worker"))
        // By hand, with no supervisor on the other end of the control socket: a clear error, not a hang.
        let alone = try fixture.cli(["worker", "--fuse-fd", "3", "--control-fd", "0"])
        #expect(alone.status == 1)
        #expect(alone.stderr.contains("started by `secretsfs mount`"), "stderr: \(alone.stderr)")
    }

    @Test("keygen, encrypt and decrypt interoperate with the age CLI")
    func keysAndAge() throws {
        let age = try requireTool("age")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let keyFile = fixture.dir.file("new-identity.txt")
        let made = try fixture.cli(["keygen", "-o", keyFile])
        #expect(made.status == 0)
        let recipient = made.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(recipient.hasPrefix("age1"))
        var info = stat()
        stat(keyFile, &info)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(try fixture.cli(["keygen", "-o", keyFile]).status != 0)  // never overwrites

        let plain = try fixture.dir.write("plain.toml", "[production]\nTOKEN = \"fake-token\"\n")
        let sealed = fixture.dir.file("plain.toml.age")
        #expect(try fixture.cli(["encrypt", "-r", recipient, "-o", sealed, plain]).status == 0)
        let byAge = try run([age, "-d", "-i", keyFile, sealed])
        #expect(byAge.stdoutText == "[production]\nTOKEN = \"fake-token\"\n")

        let fromAge = fixture.dir.file("from-age.age")
        #expect(try run([age, "-r", recipient, "-o", fromAge, plain]).status == 0)
        let decrypted = try fixture.cli(["decrypt", "-i", keyFile, fromAge])
        #expect(decrypted.status == 0)
        #expect(decrypted.stdoutText == "[production]\nTOKEN = \"fake-token\"\n")

        let passphrase = try fixture.dir.write("pass.txt", "fake passphrase\n")
        let scrypted = fixture.dir.file("scrypt.age")
        #expect(try fixture.cli(["encrypt", "--passphrase-file", passphrase, "--work-factor", "10", "-o", scrypted, plain]).status == 0)
        let opened = try fixture.cli(["decrypt", "--passphrase-file", passphrase, scrypted])
        #expect(opened.stdoutText == "[production]\nTOKEN = \"fake-token\"\n")
        chmod(passphrase, 0o644)
        let refused = try fixture.cli(["decrypt", "--passphrase-file", passphrase, scrypted])
        #expect(refused.status != 0 && refused.stderr.contains("0600"))
    }

    @Test("ASCII-armored files: age -a output is served, set keeps the armor, encrypt -a opens with age -d")
    func armored() throws {
        let age = try requireTool("age")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let plain = try fixture.dir.write("plain.toml", "[production]\nTOKEN = \"fake-token\"\n")
        let store = fixture.dir.file("secrets.toml.age")
        let recipient = fixture.identity.recipient.description
        #expect(try run([age, "-a", "-r", recipient, "-o", store, plain]).status == 0)
        let config = try fixture.writeConfig()
        #expect(try fixture.cli(["get", "--config", config, "local/production/TOKEN"]).stdoutText == "fake-token")
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "TOKEN=rotated"]).status == 0)
        let rewritten = try String(contentsOfFile: store, encoding: .utf8)
        #expect(rewritten.hasPrefix("-----BEGIN AGE ENCRYPTED FILE-----\n"))
        #expect(try fixture.cli(["get", "--config", config, "local/production/TOKEN"]).stdoutText == "rotated")
        let byAge = try run([age, "-d", "-i", fixture.dir.file("identity.txt"), store])
        #expect(byAge.stdoutText.contains("rotated"))

        let sealed = try fixture.cli(["encrypt", "-a", "-r", recipient, plain])
        #expect(sealed.status == 0 && sealed.stdoutText.hasPrefix("-----BEGIN AGE ENCRYPTED FILE-----\n"))
        let opened = try run([age, "-d", "-i", fixture.dir.file("identity.txt")], input: sealed.stdout)
        #expect(opened.stdoutText == "[production]\nTOKEN = \"fake-token\"\n")
    }

    @Test("set and get: exact bytes, stdin values, exit 3 when missing")
    func setAndGet() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let config = try fixture.writeConfig()
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "NEW_KEY=0x1F", "PORT=99"]).status == 0)
        #expect(try fixture.cli(["get", "--config", config, "local/production/NEW_KEY"]).stdoutText == "0x1F")
        #expect(try fixture.cli(["get", "--config", config, "local/production/PORT"]).stdoutText == "99")
        #expect(try fixture.cli(["get", "--config", config, "local/production/PASSWORD"]).stdoutText == "0x1F")
        let piped = try fixture.cli(["set", "--config", config, "local", "staging", "TOKEN"], input: Array("from-stdin\n".utf8))
        #expect(piped.status == 0)
        #expect(try fixture.cli(["get", "--config", config, "local/staging/TOKEN"]).stdout == Array("from-stdin".utf8))
        #expect(try fixture.cli(["get", "--config", config, "local/production/NOPE"]).status == 3)
        #expect(try fixture.cli(["get", "--config", config, "nope/production/X"]).status == 3)
        // The file is still an age file for the fixture's identity.
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: fixture.dir.file("secrets.toml.age"))))
        #expect(bytes.starts(with: Array("age-encryption.org/v1\n".utf8)))
    }

    @Test("edit runs $EDITOR on a private tmpfs copy, re-encrypts, and leaves no plaintext behind")
    func edit() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nA = \"before\"\n")
        let config = try fixture.writeConfig()
        let editor = try fixture.dir.write(
            "editor.sh", "#!/bin/sh\nls -l \"$1\" > \"\(fixture.dir.file("seen.txt"))\"\nsed -i 's/before/after/' \"$1\"\n", mode: 0o700)
        let result = try fixture.cli(["edit", "--config", config, "local"], environment: ["EDITOR": editor])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try fixture.cli(["get", "--config", config, "local/production/A"]).stdoutText == "after")
        let seen = try String(contentsOfFile: fixture.dir.file("seen.txt"), encoding: .utf8)
        #expect(seen.hasPrefix("-rw-------") && seen.contains("/dev/shm/secretsfs-edit-"))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: "/dev/shm").filter { $0.hasPrefix("secretsfs-edit-") }
        #expect(leftovers.isEmpty)

        let breaker = try fixture.dir.write("break.sh", "#!/bin/sh\necho '[broken' >> \"$1\"\n", mode: 0o700)
        let broken = try fixture.cli(["edit", "--config", config, "local"], environment: ["EDITOR": breaker])
        #expect(broken.status == 1)
        #expect(try fixture.cli(["get", "--config", config, "local/production/A"]).stdoutText == "after")
    }

    @Test("check lists stores, envs and keys but never values; a broken store exits 1")
    func check() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", baseSecrets)
        let good = try fixture.cli(["check", "--config", try fixture.writeConfig(fresh: ["DB_*"])])
        #expect(good.status == 0)
        // Each env with the owner and mode of its directory, then its keys.
        #expect(good.stdoutText.contains("production [\(getuid()):\(getgid()) 500]: DB_HOST (fresh), ENABLED"))
        for secret in ["0x1F", "default-password", "db.prod", "päss"] {
            #expect(!good.stdoutText.contains(secret) && !good.stderr.contains(secret))
        }
        chmod(fixture.dir.file("identity.txt"), 0o644)
        let broken = try fixture.cli(["check", "--config", try fixture.writeConfig()])
        #expect(broken.status == 1)
        #expect(broken.stdoutText.contains("FAILED") && broken.stdoutText.contains("0600"))
    }
}
