import Foundation
import Testing
import TestSupport

/// Whole-env files (`[[files]]` with `format`), rendered at open through a real mount and read back by each
/// format's own parser: Python's json, tomllib and PyYAML, python-dotenv, jproperties (java.util.Properties rules)
/// and bash's `.`. Values are hostile on purpose (quotes, `$`, backslashes, newlines, `=`, `#`, unicode, empty).
@Suite("rendered env files", .serialized)
struct RenderedFilesTests {
    static let secrets = #"""
        [production]
        QUOTES = "it's \"quoted\" and 'single'"
        DOLLAR = "$HOME ${HOME} $(id) `id` \\$"
        BACKSLASH = 'C:\path\n\t\'
        NEWLINES = "line one\nline two\n"
        EQUALS = "a=b=c"
        HASH = "# not a comment"
        UNICODE = "päss ✓ 日本 🙂"
        EMPTY = ""
        SPACES = "  lead and trail  "
        PORT = 5432
        RATIO = 0.5
        DEBUG = true
        DB_USER = "app"
        DB_PASS = "p@ss:w/rd"
        """#

    /// Loads each rendered file with its parser and compares with `expected.json` (typed for json, yaml and toml;
    /// the file's text for the line formats). Prints mismatching key names only, never values.
    static let checker = #"""
        import json, subprocess, sys, tomllib, yaml, dotenv, jproperties
        expected = json.load(open(sys.argv[1]))
        base = sys.argv[2]
        def text(v):
            return v if isinstance(v, str) else json.dumps(v)
        def shell(path):
            out = subprocess.run(["bash", "-c", 'set -a; . "$1"; exec env -0', "x", path], capture_output=True, check=True).stdout
            return dict(item.split(b"=", 1) for item in out.split(b"\0") if b"=" in item)
        def props(path):
            p = jproperties.Properties()
            with open(path, "rb") as f:
                p.load(f, "iso-8859-1")
            return {k: v.data for k, v in p.items()}
        loaded = {
            "json": json.load(open(base + "/app.json")),
            "yaml": yaml.safe_load(open(base + "/app.yaml", encoding="utf-8")),
            "toml": tomllib.load(open(base + "/app.toml", "rb")),
            # python-dotenv expands ${NAME} even inside single quotes; interpolate=False reads the file as written.
            "dotenv": dotenv.dotenv_values(base + "/.env", interpolate=False),
            "properties": props(base + "/app.properties"),
            "shell": {k.decode(): v.decode() for k, v in shell(base + "/app.sh").items()},
            "db": dotenv.dotenv_values(base + "/db.env", interpolate=False),
        }
        problems = []
        for fmt, values in loaded.items():
            want = {k: v for k, v in expected.items() if fmt != "db" or k.startswith("DB_")}
            typed = fmt in ("json", "yaml", "toml")
            for key, value in want.items():
                if key not in values:
                    problems.append(f"{fmt}: {key} missing")
                elif (values[key] if typed else values[key]) != (value if typed else text(value)):
                    problems.append(f"{fmt}: {key} differs")
            if fmt not in ("shell",):
                extra = set(values) - set(want)
                if extra:
                    problems.append(f"{fmt}: extra keys {sorted(extra)}")
        print("\n".join(problems) if problems else "OK")
        """#

    @Test("every format parsed back by its real parser with hostile values; a key filter; a change reaches the cached file by notice; owner and mode by [[access]]; audit names the keys; get, run --env-file and check")
    func formats() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        var files = ""
        for (name, format) in [(".env", "dotenv"), ("app.json", "json"), ("app.yaml", "yaml"), ("app.toml", "toml"),
                               ("app.properties", "properties"), ("app.sh", "shell")] {
            files += "[[files]]\npath = \"local/production/\(name)\"\nformat = \"\(format)\"\n"
        }
        files += "[[files]]\npath = \"local/*/db.env\"\nformat = \"dotenv\"\nkeys = [\"DB_*\"]\n"
        files += "[[access]]\npath = \"local/production/app.sh\"\nfile_mode = \"0440\"\n"
        files += "[audit]\npath = \"\(fixture.dir.file("audit.jsonl"))\"\npaths = [\"local/production/db.env\"]\n"
        let config = try fixture.writeConfig(ttl: "10m", extra: files)
        let fs = try fixture.mount(config: config)
        let names = try fs.list("local/production")
        for name in [".env", "app.json", "app.yaml", "app.toml", "app.properties", "app.sh", "db.env", "PORT"] {
            #expect(names.contains(name), "\(name) listed")
        }
        let copies = try TemporaryDirectory()
        defer { copies.remove() }
        for name in [".env", "app.json", "app.yaml", "app.toml", "app.properties", "app.sh", "db.env"] {
            let bytes = try fs.read("local/production/\(name)")
            #expect(try fs.status("local/production/\(name)").st_size == bytes.count, "\(name): size follows the bytes")
            try Data(bytes).write(to: URL(fileURLWithPath: copies.file(name)))
        }
        let expected: [String: Any] = [
            "QUOTES": "it's \"quoted\" and 'single'", "DOLLAR": "$HOME ${HOME} $(id) `id` \\$", "BACKSLASH": "C:\\path\\n\\t\\",
            "NEWLINES": "line one\nline two\n", "EQUALS": "a=b=c", "HASH": "# not a comment", "UNICODE": "päss ✓ 日本 🙂",
            "EMPTY": "", "SPACES": "  lead and trail  ", "PORT": 5432, "RATIO": 0.5, "DEBUG": true, "DB_USER": "app",
            "DB_PASS": "p@ss:w/rd",
        ]
        let expectedPath = copies.file("expected.json")
        try JSONSerialization.data(withJSONObject: expected).write(to: URL(fileURLWithPath: expectedPath))
        let script = try copies.write("check.py", Self.checker)
        let result = try run([packageRoot() + "/.venv/bin/python", script, expectedPath, copies.path], timeout: 60)
        #expect(result.status == 0, "checker: \(result.stderr.suffix(300))")
        #expect(result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "OK", "\(result.stdoutText)")
        #expect(try fs.status("local/production/app.sh").st_mode & 0o777 == 0o440, "[[access]] applies to a rendered file")
        let get = try fixture.cli(["get", "--config", config, "local/production/db.env"])
        let mounted = try fs.read("local/production/db.env")
        #expect(get.status == 0 && get.stdout == mounted, "get reads the same rendering: \(get.stderr)")
        let audit = (try? String(contentsOfFile: fixture.dir.file("audit.jsonl"), encoding: .utf8)) ?? ""
        #expect(audit.contains(#""path":"local/production/db.env""#) && audit.contains(#""keys":["DB_PASS","DB_USER"]"#), "the audit line names the keys used: \(audit)")
        #expect(!audit.contains("p@ss"))
        let run = try fixture.cli([
            "run", "--config", config, "--env-file", "local/production/db.env", "--",
            "/bin/sh", "-c", "test \"$DB_USER\" = app && test \"$DB_PASS\" = 'p@ss:w/rd' && test -z \"$PORT\" && echo loaded",
        ])
        #expect(run.status == 0 && run.stdoutText == "loaded\n", "run --env-file: \(run.stderr)")
        let check = try fixture.cli(["check", "--config", config])
        #expect(check.stdoutText.contains("db.env (dotenv, 0:0 400): DB_PASS, DB_USER"), "\(check.stdoutText)")
        #expect(check.stdoutText.contains("app.sh (shell, 0:0 440)"), "\(check.stdoutText)")
        #expect(!check.stdoutText.contains("p@ss") && !check.stdoutText.contains("päss"))

        // One key changes: the cached rendered file (ttl 10 min) shows it by change notice.
        let set = try fixture.cli(["set", "--config", config, "local", "production", "PORT=6000"])
        #expect(set.status == 0, "\(set.stderr)")
        try waitUntil("the rendered file shows the change", seconds: 10) {
            ((try? fs.readText("local/production/app.json")) ?? "").contains("\"PORT\": \"6000\"")
        }
        #expect(!fs.log.contains("p@ss") && !fs.log.contains("päss"))
    }

    @Test("a rendered file that uses a fresh key is fetched on every open; one of cached keys waits for its ttl; a frozen store fails it with EIO within timeout")
    func freshAndFailing() throws {
        let redis = try RedisServer()
        defer { redis.remove() }
        // No notices: only fresh fetches can show a change before the ttl.
        _ = try redis.cli(["CONFIG", "SET", "notify-keyspace-events", ""])
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "n-1"), ("DB_PASS", "p-1")])
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.dir.write(
            "fresh.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "10m"
            stale_if_error = "0"
            [stores.redis]
            type = "redis"
            url = "\(redis.url)"
            fresh = ["DB_*"]
            timeout = "1s"
            [[files]]
            path = "redis/production/all.env"
            format = "dotenv"
            [[files]]
            path = "redis/production/names.env"
            format = "dotenv"
            keys = ["NAME"]
            """)
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("redis/production/all.env") == "DB_PASS='p-1'\nNAME='n-1'\n")
        #expect(try fs.readText("redis/production/names.env") == "NAME='n-1'\n")
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "n-2"), ("DB_PASS", "p-2")])
        #expect(try fs.readText("redis/production/all.env") == "DB_PASS='p-2'\nNAME='n-2'\n", "fresh: one view fetched now, both keys from it")
        #expect(try fs.readText("redis/production/names.env") == "NAME='n-1'\n", "cached: until its ttl")
        #expect(try fs.readText("redis/production/DB_PASS") == "p-2")
        redis.pause()
        defer { redis.resume() }
        // Both were read before: the kernel revalidates the name (a LOOKUP) and, when that fails, looks it up
        // again (a second LOOKUP); the read still waits one timeout, not two.
        for path in ["redis/production/all.env", "redis/production/DB_PASS"] {
            let started = Date()
            do {
                _ = try fs.readText(path, timeout: 10)
                Issue.record("\(path) of a frozen store was served")
            } catch let error as FSError {
                #expect(error.code == EIO, "\(path): \(error)")
            }
            #expect(Date().timeIntervalSince(started) < 1.5, "\(path): bounded by the store's timeout")
        }
    }
}
