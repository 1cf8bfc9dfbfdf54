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

    /// Writes with Dynaconf's own writers, then compares what Dynaconf reads from the rendered secrets file with
    /// what it reads from Vault and Redis directly; prints mismatching key names only.
    static let dynaconfScript = #"""
        import json, sys
        from dynaconf import Dynaconf
        from dynaconf.loaders import redis_loader, vault_loader
        mode = sys.argv[1]
        def backends(env, redis_port):
            # Vault through the VAULT_*_FOR_DYNACONF environment the test passes; Redis as Dynaconf's docs show.
            return Dynaconf(environments=True, env=env, redis_enabled=True,
                            redis={"host": "127.0.0.1", "port": redis_port, "db": 0, "decode_responses": True})
        data = {
            "default": {"PORT": 5432, "NAME": "app", "RATIO": 0.5, "DEBUG": True, "TAGS": ["a", "b"]},
            "production": {"NAME": "prod-app", "DB_PASS": "p'\"$x ü\\n"},
        }
        def dump(make):
            out = {}
            for env in ("production", "default"):
                settings = make(env)
                out[env] = {key: [type(settings.get(key)).__name__, settings.get(key)]
                            for key in ("PORT", "NAME", "RATIO", "DEBUG", "TAGS", "DB_PASS")}
            return json.dumps(out, sort_keys=True)
        if mode == "write":
            for env, values in data.items():
                settings = backends(env, int(sys.argv[2]))
                vault_loader.write(settings, values)
                redis_loader.write(settings, values)
            print("OK")
        elif mode == "backends":
            print(dump(lambda env: backends(env, int(sys.argv[2]))))
        else:
            print(dump(lambda env: Dynaconf(environments=True, env=env, settings_files=[sys.argv[2]])))
        """#

    @Test("Dynaconf: a secrets file of every env (vault/.secrets.toml, redis/.secrets.toml) reads as Dynaconf reads Vault and Redis directly")
    func dynaconfSecretsFile() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        let redis = try RedisServer()
        defer { redis.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let python = packageRoot() + "/.venv/bin/python"
        let script = try fixture.dir.write("dynaconf_check.py", Self.dynaconfScript)
        let vault = [
            "VAULT_ENABLED_FOR_DYNACONF": "true", "VAULT_URL_FOR_DYNACONF": bao.address, "VAULT_TOKEN_FOR_DYNACONF": "root",
            "VAULT_PATH_FOR_DYNACONF": "dynaconf", "VAULT_MOUNT_POINT_FOR_DYNACONF": "secret", "PATH": "/usr/bin:/bin",
        ]
        let write = try run([python, script, "write", String(redis.port)], environment: vault, timeout: 60)
        #expect(write.status == 0 && write.stdoutText == "OK\n", "Dynaconf's writers: \(write.stderr.suffix(400))")
        let config = try fixture.writeTwoBackendConfig(bao: bao, redis: redis, cache: "ttl = \"10m\"")
        let text = try String(contentsOfFile: config, encoding: .utf8) + """

            [[files]]
            path = "vault/.secrets.toml"
            format = "toml"
            [[files]]
            path = "redis/.secrets.toml"
            format = "toml"
            """
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try fixture.mount(config: config)
        #expect(Set(try fs.list("vault")).isSuperset(of: [".secrets.toml", "production", "default"]))
        let copies = try TemporaryDirectory()
        defer { copies.remove() }
        var paths: [String] = []
        for top in ["vault", "redis"] {
            try FileManager.default.createDirectory(atPath: copies.file(top), withIntermediateDirectories: true)
            let bytes = try fs.read("\(top)/.secrets.toml")
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("[default]\n"), "\(top): default first")
            try Data(bytes).write(to: URL(fileURLWithPath: copies.file("\(top)/.secrets.toml")))
            paths.append(copies.file("\(top)/.secrets.toml"))
        }
        let direct = try run([python, script, "backends", String(redis.port)], environment: vault, timeout: 60)
        #expect(direct.status == 0 && direct.stdoutText.contains("prod-app"), "Dynaconf reads the backends: \(direct.stderr.suffix(400))")
        for path in paths {
            let fromFile = try run([python, script, "file", path], environment: ["PATH": "/usr/bin:/bin"], timeout: 60)
            #expect(fromFile.status == 0, "\(fromFile.stderr.suffix(400))")
            // Compared here, never printed: the dumps hold the values.
            #expect(fromFile.stdoutText == direct.stdoutText, "\(path): Dynaconf reads the rendered file differently from the backends")
        }
        // A change in one env reaches the file of every env by notice (Redis keyspace notifications).
        try redis.hset("DYNACONF_PRODUCTION", [("NAME", "renamed")])
        try waitUntil("the secrets file shows the change", seconds: 10) {
            ((try? fs.readText("redis/.secrets.toml")) ?? "").contains("NAME = \"renamed\"")
        }
    }
}
