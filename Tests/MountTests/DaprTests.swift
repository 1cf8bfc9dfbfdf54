import Foundation
import Testing
import TestSupport

/// The Dapr secrets API (`[api]`): plain HTTP with curl, and the official Dapr Python SDK (PyPI `dapr`, from the
/// project venv) over gRPC against a real daemon backed by a file store, a real redis-server and a real OpenBao.
@Suite("Dapr API", .serialized)
struct DaprTests {
    /// The `[api]` table for both listeners.
    static func apiTable(http: Int, grpc: Int, token: String?, extra: String = "") -> String {
        """
        [api]
        dapr_http = "127.0.0.1:\(http)"
        dapr_grpc = "127.0.0.1:\(grpc)"
        \(token.map { "token_file = \"\($0)\"" } ?? "")
        \(extra)
        """
    }

    @Test("curl: GET secret and bulk, token, allowed/denied, metadata.env, Dapr's status codes, a fresh key rotated")
    func http() throws {
        let curl = try requireTool("curl")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted(
            "secrets.toml.age", "[production]\nDB_PASS = \"dapr-1\"\nADMIN_KEY = \"no\"\n[staging]\nDB_PASS = \"stage-1\"\n")
        let token = try fixture.dir.write("api-token", "t0ken\n")
        let port = try freePort()
        let config = try fixture.writeConfig(fresh: ["DB_*"], extra: """
            \(Self.apiTable(http: port, grpc: try freePort(), token: token))
            [api.stores.local]
            denied = ["ADMIN_*"]
            """)
        let fs = try fixture.mount(config: config)
        func get(_ path: String, token: String? = "t0ken") throws -> (String, String) {
            var argv = [curl, "-s", "-m", "5", "-w", "\n%{http_code}"]
            if let token { argv += ["-H", "dapr-api-token: \(token)"] }
            var result = try run(argv + ["http://127.0.0.1:\(port)\(path)"], timeout: 10)
            for _ in 0..<50 where result.stdoutText.hasSuffix("000") {
                usleep(100_000)
                result = try run(argv + ["http://127.0.0.1:\(port)\(path)"], timeout: 10)
            }
            let text = result.stdoutText
            let split = text.lastIndex(of: "\n") ?? text.endIndex
            return (String(text[text.index(after: split)...]), String(text[..<split]))
        }
        #expect(try get("/v1.0/healthz/outbound").0 == "204")
        #expect(try get("/v1.0/healthz", token: nil).0 == "204", "health needs no token, as in Dapr")
        #expect(try get("/v1.0/secrets/local/DB_PASS") == ("200", #"{"DB_PASS":"dapr-1"}"#))
        #expect(try get("/v1.0/secrets/local/DB_PASS?metadata.env=staging") == ("200", #"{"DB_PASS":"stage-1"}"#))
        #expect(try get("/v1.0/secrets/local/bulk") == ("200", #"{"DB_PASS":{"DB_PASS":"dapr-1"}}"#), "denied names are left out")
        let forbidden = try get("/v1.0/secrets/local/ADMIN_KEY")
        #expect(forbidden.0 == "403" && forbidden.1.contains("ERR_PERMISSION_DENIED"))
        #expect(try get("/v1.0/secrets/local/NOPE") == ("204", ""), "Dapr documents 204 for a secret not found")
        let noStore = try get("/v1.0/secrets/nostore/DB_PASS")
        #expect(noStore.0 == "400" && noStore.1.contains("ERR_SECRET_STORE_NOT_FOUND"))
        #expect(try get("/v1.0/secrets/local/DB_PASS", token: nil).0 == "401")
        #expect(try get("/v1.0/secrets/local/DB_PASS", token: "wrong").0 == "401")
        // Fresh through the API: a rotation shows on the next call.
        try fixture.writeEncrypted("secrets.toml.age", "[production]\nDB_PASS = \"dapr-2\"\nADMIN_KEY = \"no\"\n")
        #expect(try get("/v1.0/secrets/local/DB_PASS") == ("200", #"{"DB_PASS":"dapr-2"}"#))
        #expect(!fs.log.contains("dapr-1") && !fs.log.contains("dapr-2"))
    }

    @Test("Dapr Python SDK, file store: get_secret, get_bulk_secret, token, wrong token, allowed/denied, env metadata, fresh rotation, DAPR_*_PORT")
    func sdkFileStore() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted(
            "secrets.toml.age",
            "[default]\nLOG_LEVEL = \"info\"\n[production]\nDB_PASS = \"sdk-1\"\nPORT = 5432\nADMIN_KEY = \"no\"\n"
                + "[staging]\nDB_PASS = \"stage-1\"\n")
        // The rotation the client triggers between two calls: an atomic rename over the store's file.
        try fixture.writeEncrypted("rotated.toml.age", "[production]\nDB_PASS = \"sdk-2\"\nPORT = 5432\n")
        let token = try fixture.dir.write("api-token", "sdk-t0ken\n")
        let (http, grpc) = (try freePort(), try freePort())
        let config = try fixture.writeConfig(fresh: ["DB_*"], extra: """
            \(Self.apiTable(http: http, grpc: grpc, token: token))
            [api.stores.local]
            allowed = ["DB_*", "PORT", "LOG_*", "ADMIN_*"]
            denied = ["ADMIN_*"]
            [api.stores.app]
            allowed = ["PORT"]
            [scopes.app]
            chain = ["local"]
            """)
        let fs = try fixture.mount(config: config)
        let client = try DaprClient(http: http, grpc: grpc, token: "sdk-t0ken")
        let results = try client.calls([
            .get("local", "DB_PASS"),
            .get("local", "PORT"),
            .get("local", "LOG_LEVEL"),
            .get("local", "DB_PASS", env: "staging"),
            .bulk("local"),
            .get("local", "ADMIN_KEY"),
            .get("local", "DB_MISSING"),
            .get("nostore", "DB_PASS"),
            .get("app", "PORT"),
            .get("app", "DB_PASS"),
            .run(["mv", fixture.dir.file("rotated.toml.age"), fixture.dir.file("secrets.toml.age")]),
            .get("local", "DB_PASS"),
        ])
        #expect(results[0] == .data(["DB_PASS": "sdk-1"]))
        #expect(results[1] == .data(["PORT": "5432"]))
        #expect(results[2] == .data(["LOG_LEVEL": "info"]), "default shows under every env")
        #expect(results[3] == .data(["DB_PASS": "stage-1"]), "metadata env picks the env")
        #expect(
            results[4] == .bulk(["DB_PASS": ["DB_PASS": "sdk-1"], "LOG_LEVEL": ["LOG_LEVEL": "info"], "PORT": ["PORT": "5432"]]),
            "bulk: every allowed and not denied key of the env")
        #expect(results[5] == .error("PERMISSION_DENIED"))
        #expect(results[6] == .error("NOT_FOUND"))
        #expect(results[7] == .error("INVALID_ARGUMENT"))
        #expect(results[8] == .data(["PORT": "5432"]), "a scope is a store name too")
        #expect(results[9] == .error("PERMISSION_DENIED"), "the scope's own allow list")
        #expect(results[11] == .data(["DB_PASS": "sdk-2"]), "a fresh key rotated between two calls of one client")

        // A wrong token and no token are refused; the older DAPR_RUNTIME_HOST + DAPR_*_PORT settings work too.
        let wrong = try DaprClient(http: http, grpc: grpc, token: "nope").calls([.get("local", "PORT")])
        #expect(wrong == [.error("UNAUTHENTICATED")])
        let none = try DaprClient(http: http, grpc: grpc, token: nil).calls([.get("local", "PORT")])
        #expect(none == [.error("UNAUTHENTICATED")])
        let ports = try DaprClient(http: http, grpc: grpc, token: "sdk-t0ken", portsOnly: true).calls([.get("local", "PORT")])
        #expect(ports == [.data(["PORT": "5432"])])
        #expect(!fs.log.contains("sdk-1") && !fs.log.contains("sdk-2") && !fs.log.contains("sdk-t0ken"))
    }

    @Test("Dapr Python SDK against a real redis-server: Dynaconf hashes, a fresh key rotated by HSET between two calls, no token")
    func sdkRedis() throws {
        let server = try RedisServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.hset("DYNACONF_PRODUCTION", [("DB_PASS", "redis-1"), ("PORT", "@int 6380")])
        try server.hset("DYNACONF_DEFAULT", [("NAME", "@str 007")])
        let (http, grpc) = (try freePort(), try freePort())
        let config = try fixture.dir.write("redis.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "5m"
            fresh = ["DB_*"]
            [stores.redis]
            type = "redis"
            url = "\(server.url)"
            timeout = "1s"
            \(Self.apiTable(http: http, grpc: grpc, token: nil))
            """)
        let fs = try fixture.mount(config: config)
        let redisCLI = try requireTool("redis-cli")
        // A value that is not UTF-8 text: the file serves its bytes; the API refuses it with a clear message.
        let binary = try run([redisCLI, "-p", "\(server.port)", "-x", "HSET", "DYNACONF_PRODUCTION", "BLOB"], input: [0xFF, 0xFE, 0x00])
        #expect(binary.status == 0)
        let results = try DaprClient(http: http, grpc: grpc, token: nil).calls([
            .get("redis", "DB_PASS"), .get("redis", "PORT"), .get("redis", "NAME"),
            .run([redisCLI, "-p", "\(server.port)", "HSET", "DYNACONF_PRODUCTION", "DB_PASS", "redis-2"]),
            .get("redis", "DB_PASS"), .get("redis", "BLOB"), .state("redis", "DB_PASS"),
        ])
        #expect(results[0] == .data(["DB_PASS": "redis-1"]))
        #expect(results[1] == .data(["PORT": "6380"]), "Dynaconf's @int token read as the file reads it")
        #expect(results[2] == .data(["NAME": "007"]))
        #expect(results[4] == .data(["DB_PASS": "redis-2"]), "fresh: the HSET between the calls")
        #expect(results[5] == .error("INTERNAL"))
        #expect(results[6] == .error("UNIMPLEMENTED"), "any other method of Dapr's service")
        _ = try server.cli(["HDEL", "DYNACONF_PRODUCTION", "BLOB"])
        let bulk = try DaprClient(http: http, grpc: grpc, token: nil).calls([.bulk("redis")])
        #expect(bulk == [.bulk(["DB_PASS": ["DB_PASS": "redis-2"], "NAME": ["NAME": "007"], "PORT": ["PORT": "6380"]])])
        let curl = try requireTool("curl")
        _ = try run([redisCLI, "-p", "\(server.port)", "-x", "HSET", "DYNACONF_PRODUCTION", "DB_BLOB"], input: [0xFF, 0xFE, 0x00])
        let answer = try run([curl, "-s", "-m", "5", "-w", "\n%{http_code}", "http://127.0.0.1:\(http)/v1.0/secrets/redis/DB_BLOB"], timeout: 10)
        #expect(answer.stdoutText.hasSuffix("\n500") && answer.stdoutText.contains("not UTF-8 text"))
        #expect(try fs.read("redis/production/DB_BLOB") == [0xFF, 0xFE, 0x00], "the file serves the bytes as stored")
        #expect(!fs.log.contains("redis-1") && !fs.log.contains("redis-2"))
    }

    @Test("Dapr Python SDK against a real OpenBao: Dynaconf's layout, a fresh key rotated by bao kv patch, a cached key")
    func sdkVault() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try server.cli(["kv", "put", "secret/dynaconf/production", "DB_PASS=bao-1", "REGION=eu"])
        try server.cli(["kv", "put", "secret/dynaconf/global", "TEAM=core"])
        let vaultToken = try fixture.dir.write("vault-token", "root\n")
        let apiToken = try fixture.dir.write("api-token", "bao-api\n")
        let (http, grpc) = (try freePort(), try freePort())
        let config = try fixture.dir.write("vault.toml", """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "5m"
            fresh = ["DB_*"]
            [stores.vault]
            type = "vault"
            address = "\(server.address)"
            token_file = "\(vaultToken)"
            timeout = "2s"
            \(Self.apiTable(http: http, grpc: grpc, token: apiToken))
            """)
        let fs = try fixture.mount(config: config)
        let results = try DaprClient(http: http, grpc: grpc, token: "bao-api").calls([
            .get("vault", "DB_PASS"), .get("vault", "REGION"), .get("vault", "TEAM"),
            .run([server.binary, "kv", "patch", "-address=\(server.address)", "secret/dynaconf/production", "DB_PASS=bao-2", "REGION=us"]),
            .get("vault", "DB_PASS"), .get("vault", "REGION"),
        ], environment: ["VAULT_TOKEN": "root", "HOME": server.dir.path])
        #expect(results[0] == .data(["DB_PASS": "bao-1"]))
        #expect(results[1] == .data(["REGION": "eu"]))
        #expect(results[2] == .data(["TEAM": "core"]), "global overrides every env")
        #expect(results[4] == .data(["DB_PASS": "bao-2"]), "fresh: the patch between the calls")
        #expect(results[5] == .data(["REGION": "eu"]), "cached until its ttl or a change notice")
        #expect(!fs.log.contains("bao-1") && !fs.log.contains("bao-2") && !fs.log.contains("bao-api"))
    }
}

/// The official Dapr Python SDK (`dapr.clients.DaprClient`) in the project venv, run as a Dapr app would run it:
/// configured only by DAPR_* environment variables, one client for a list of calls.
struct DaprClient {
    enum Call {
        case get(String, String, env: String? = nil)
        case bulk(String)
        /// `get_state`, a method of Dapr's service secretsfs does not serve.
        case state(String, String)
        /// A command the client runs between two calls (a rotation).
        case run([String])
    }

    enum Outcome: Equatable, CustomStringConvertible {
        case data([String: String])
        case bulk([String: [String: String]])
        case error(String)
        case ran

        var description: String {
            switch self {
            case .data(let data): "data(keys: \(data.keys.sorted()))"
            case .bulk(let data): "bulk(keys: \(data.keys.sorted()))"
            case .error(let code): "error(\(code))"
            case .ran: "ran"
            }
        }
    }

    let python: String
    let environment: [String: String]

    init(http: Int, grpc: Int, token: String?, portsOnly: Bool = false) throws {
        python = packageRoot() + "/.venv/bin/python"
        let check = try run([python, "-c", "import dapr.clients, dapr.version; print(dapr.version.__version__)"], timeout: 60)
        guard check.status == 0 else {
            throw TestFailure.message("the Dapr Python SDK is not installed in .venv: run `make deps`")
        }
        print("Dapr Python SDK \(check.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))")
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("DAPR_") }
        if portsOnly {
            environment["DAPR_RUNTIME_HOST"] = "127.0.0.1"
            environment["DAPR_HTTP_PORT"] = "\(http)"
            environment["DAPR_GRPC_PORT"] = "\(grpc)"
        } else {
            environment["DAPR_HTTP_ENDPOINT"] = "http://127.0.0.1:\(http)"
            environment["DAPR_GRPC_ENDPOINT"] = "127.0.0.1:\(grpc)"
        }
        if let token { environment["DAPR_API_TOKEN"] = token }
        environment["DAPR_HEALTH_TIMEOUT"] = "20"
        self.environment = environment
    }

    static let script = """
        import json, subprocess, sys
        from dapr.clients import DaprClient
        out = []
        with DaprClient() as client:
            for call in json.loads(sys.argv[1]):
                try:
                    if call["op"] == "run":
                        subprocess.run(call["argv"], check=True, capture_output=True, timeout=30)
                        out.append({"ran": True})
                    elif call["op"] == "get":
                        meta = {"env": call["env"]} if call.get("env") else {}
                        response = client.get_secret(store_name=call["store"], key=call["key"], secret_metadata=meta)
                        out.append({"data": dict(response.secret)})
                    elif call["op"] == "state":
                        client.get_state(store_name=call["store"], key=call["key"])
                        out.append({"ran": True})
                    else:
                        response = client.get_bulk_secret(store_name=call["store"])
                        out.append({"bulk": {k: dict(v) for k, v in response.secrets.items()}})
                except subprocess.CalledProcessError as error:
                    out.append({"error": "command failed: %s" % error.returncode})
                except Exception as error:
                    code = error.code() if callable(getattr(error, "code", None)) else None
                    out.append({"error": code.name if code is not None else type(error).__name__})
        print(json.dumps(out))
        """

    func calls(_ calls: [Call], environment extra: [String: String] = [:]) throws -> [Outcome] {
        let list: [[String: Any]] = calls.map { call in
            switch call {
            case .get(let store, let key, let env):
                var item: [String: Any] = ["op": "get", "store": store, "key": key]
                if let env { item["env"] = env }
                return item
            case .bulk(let store): return ["op": "bulk", "store": store]
            case .state(let store, let key): return ["op": "state", "store": store, "key": key]
            case .run(let argv): return ["op": "run", "argv": argv]
            }
        }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: list), as: UTF8.self)
        let result = try run(
            [python, "-c", Self.script, json], environment: environment.merging(extra) { $1 }, timeout: 90)
        guard result.status == 0,
            let parsed = try? JSONSerialization.jsonObject(with: Data(result.stdoutText.utf8)) as? [[String: Any]]
        else {
            // The SDK's own message, without the values (the script prints them only on success).
            throw TestFailure.message("the Dapr client failed (status \(result.status)): \(result.stderr.suffix(2000))")
        }
        return parsed.map { item in
            if let data = item["data"] as? [String: String] { return .data(data) }
            if let bulk = item["bulk"] as? [String: [String: String]] { return .bulk(bulk) }
            if let error = item["error"] as? String { return .error(error) }
            return .ran
        }
    }
}
