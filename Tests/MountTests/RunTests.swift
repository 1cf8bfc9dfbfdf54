import Foundation
import Testing
import TestSupport

@Suite("secretsfs run and the env store", .serialized)
struct RunTests {
    static let secrets = """
        [default]
        PORT = 5432
        [production]
        PASSWORD = "0x1F"
        DB_HOST = "db.prod"
        """

    @Test("secrets and plain variables reach the command; its exit status is run's; nothing is printed")
    func variables() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let config = try fixture.writeConfig()
        let result = try fixture.cli([
            "run", "--config", config, "--secret", "DB_PASSWORD=local/production/PASSWORD", "--env", "PLAIN=x",
            "--secret", "PORT=local/production/PORT", "--", "/bin/sh", "-c", "printf %s \"$DB_PASSWORD|$PLAIN|$PORT\"",
        ])
        #expect(result.status == 0)
        #expect(result.stdoutText == "0x1F|x|5432")
        #expect(result.stderr.isEmpty)
        let status = try fixture.cli(["run", "--config", config, "--", "/bin/sh", "-c", "exit 7"])
        #expect(status.status == 7)
        // PATH is searched, and the rest of the environment is kept.
        let env = try fixture.cli(
            ["run", "--config", config, "--secret", "P=local/production/PASSWORD", "--", "env"], environment: ["KEEP": "kept"])
        #expect(env.stdoutText.split(separator: "\n").contains("P=0x1F"))
        #expect(env.stdoutText.split(separator: "\n").contains("KEEP=kept"))
        #expect(try fixture.cli(["run", "--config", config, "--", "no-such-command-here"]).status == 127)
    }

    @Test("all or nothing: a missing secret exits 3 naming it and the command never starts")
    func missing() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let config = try fixture.writeConfig()
        let marker = fixture.dir.file("started")
        let result = try fixture.cli([
            "run", "--config", config, "--secret", "A=local/production/PASSWORD", "--secret", "B=local/production/NOPE",
            "--", "/usr/bin/touch", marker,
        ])
        #expect(result.status == 3)
        #expect(result.stderr.contains("NOPE"))
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(!result.stderr.contains("0x1F"))
    }

    @Test("refused names and references get a clear message and exit 2", arguments: [
        ["--secret", "1BAD=local/production/PASSWORD"], ["--secret", "BAD-NAME=local/production/PASSWORD"],
        ["--secret", "OK=local/production"], ["--secret", "OK=local/../PASSWORD"], ["--env", "9X=1"],
        ["--secret", "NOEQUALS"],
    ])
    func refused(arguments: [String]) throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let result = try fixture.cli(["run", "--config", try fixture.writeConfig()] + arguments + ["--", "/bin/true"])
        #expect(result.status == 2, "\(arguments): \(result.stderr)")
        #expect(result.stderr.contains("secretsfs: "))
    }

    @Test("--all puts every key of an env in, with a prefix; a key unfit for a variable name is refused")
    func all() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets + "\n[staging]\n\"BAD-KEY\" = \"x\"\n")
        let config = try fixture.writeConfig()
        let result = try fixture.cli(["run", "--config", config, "--all", "local/production", "--prefix", "APP_", "--", "env"])
        let lines = Set(result.stdoutText.split(separator: "\n").map(String.init))
        #expect(lines.isSuperset(of: ["APP_PASSWORD=0x1F", "APP_DB_HOST=db.prod", "APP_PORT=5432"]))
        let bad = try fixture.cli(["run", "--config", config, "--all", "local/staging", "--", "env"])
        #expect(bad.status != 0 && bad.stderr.contains("BAD-KEY"))
    }

    @Test("the env store: Prefect's variables through a real mount and through run")
    func envStore() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let config = try fixture.writeConfig(extra: """
            [stores.prefect]
            type = "env"

            [scopes.app]
            chain = ["prefect", "local"]
            """)
        let environment = ["PREFECT__CONTEXT__SECRETS__GITHUB_TOKEN": "ghp-not-real", "PREFECT__CONTEXT__SECRETS__PASSWORD": "from-env"]
        let fs = try fixture.mount(config: config, environment: environment)
        #expect(try fs.list("prefect") == ["default", "global"])
        #expect(try fs.readText("prefect/default/GITHUB_TOKEN") == "ghp-not-real")
        #expect(try fs.readText("app/production/GITHUB_TOKEN") == "ghp-not-real", "default keys show in every env")
        #expect(try fs.readText("app/production/PASSWORD") == "from-env", "the env store first in the scope's chain")
        #expect(try fs.readText("app/production/DB_HOST") == "db.prod")
        let run = try fixture.cli(
            ["run", "--config", config, "--secret", "T=prefect/default/GITHUB_TOKEN", "--", "/bin/sh", "-c", "printf %s \"$T\""],
            environment: environment)
        #expect(run.stdoutText == "ghp-not-real")
        #expect(!fs.log.contains("ghp-not-real"))
    }
}
