import Foundation
import Logging
import SecretsCore
import StoreConformance
import Locking
import Testing
import TestSupport

@testable import VaultStore

func vaultStore(_ server: BaoServer, _ extra: String, name: String = "v") throws -> VaultStore {
    let config = try Config.parse(
        text: "[stores.\(name)]\ntype = \"vault\"\naddress = \"\(server.address)\"\n\(extra)\n", file: "c.toml")
    return try VaultStore(config: try #require(config.stores.first), logger: Logger(label: "test"))
}

/// Writes an env the way Dynaconf's writer does: POST the whole secret.
func dynaconfWrite(_ server: BaoServer, env: String, _ fields: [String: SecretValue], mount: String = "secret") throws {
    let result = try server.http("POST", "/v1/\(mount)/data/dynaconf/\(env)", body: SecretValue.table(["data": .table(fields)]).jsonText())
    guard result.status == 200 else { throw TestFailure.message("write failed: HTTP \(result.status)") }
}

@Suite("Vault store against a real OpenBao dev server", .serialized)
struct VaultStoreTests {
    @Test("passes the store conformance suite (token from token_file, watching)")
    func conformance() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let data = Locked(StoreConformance.seed)
        for (env, fields) in StoreConformance.seed { try dynaconfWrite(server, env: env, fields) }
        let token = try server.dir.write("token", "root\n")
        // Watching (KV v2 metadata polls), so the watch, close and change-before-watch checks run too.
        let store = try vaultStore(server, "token_file = \"\(token)\"\nwatch = \"200ms\"")
        defer { store.close() }
        try StoreConformance(store: store, witness: { try vaultStore(server, "token_file = \"\(token)\"\nwatch = \"200ms\"") }) {
            env, key, value in
            let fields = data.withLock { state -> [String: SecretValue] in
                state[env, default: [:]][key] = value
                return state[env, default: [:]]
            }
            try dynaconfWrite(server, env: env, fields)
        }.checkConformance()
    }

    @Test("Dynaconf's layout: numbers stay JSON, strings exact, unicode, a 1 MiB value, env listing")
    func layout() throws {
        let server = try BaoServer()
        defer { server.remove() }
        let body = #"{"data": {"PASSWORD": 123456, "ON": true, "NAME": "0x1F", "CONF": {"b": 1, "a": [1, 2]}, "UNICODE_ü": "päss ✓"}}"#
        #expect(try server.http("POST", "/v1/secret/data/dynaconf/production", body: body).status == 200)
        try server.cli(["kv", "put", "secret/dynaconf/default", "ONLY_DEFAULT=d", "NAME=default"])
        try dynaconfWrite(server, env: "big", ["BIG": .string(String(repeating: "q", count: 1 << 20))])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"")
        defer { store.close() }
        #expect(try store.envs(at: nil) == ["big", "default", "production"])
        let layers = ["global", "production", "dynaconf", "default"]
        func bytes(_ key: String) throws -> String? { try store.value(of: key, layers: layers, at: nil)?.fileBytes().utf8String() }
        #expect(try bytes("PASSWORD") == "123456")
        #expect(try bytes("ON") == "true")
        #expect(try bytes("NAME") == "0x1F")
        #expect(try bytes("CONF") == #"{"a":[1,2],"b":1}"#)
        #expect(try bytes("UNICODE_ü") == "päss ✓")
        #expect(try bytes("ONLY_DEFAULT") == "d")
        #expect(try bytes("MISSING") == nil)
        #expect(try store.value(of: "BIG", layers: ["big"], at: nil)?.fileBytes().count == 1 << 20)
    }

    @Test("KV v1 mounts: detected through sys/internal/ui/mounts, or configured")
    func kvVersion1() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try server.cli(["secrets", "enable", "-path=kv1", "-version=1", "kv"])
        try server.cli(["kv", "put", "kv1/dynaconf/production", "PASSWORD=v1-value"])
        let token = try server.dir.write("token", "root\n")
        for extra in ["mount = \"kv1\"", "mount = \"kv1\"\nkv_version = 1"] {
            let store = try vaultStore(server, "token_file = \"\(token)\"\n" + extra)
            defer { store.close() }
            #expect(try store.envs(at: nil) == ["production"])
            #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("v1-value"))
            try store.write(env: "production", values: [("NEW", .string("merged"))])
            #expect(try store.fields(of: "production", at: nil) == ["PASSWORD": .string("v1-value"), "NEW": .string("merged")])
            try server.cli(["kv", "put", "kv1/dynaconf/production", "PASSWORD=v1-value"])
        }
    }

    @Test("AppRole logs in once (a single-use secret_id proves it) and renews a short-TTL token at 2/3 of its TTL")
    func appRoleAndRenewal() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try server.cli(["auth", "enable", "approle"])
        let policy = try server.dir.write("reader.hcl", "path \"secret/*\" { capabilities = [\"read\", \"list\"] }\n")
        try server.cli(["policy", "write", "reader", policy])
        try server.cli(["write", "auth/approle/role/app", "token_policies=reader", "token_ttl=4s", "token_max_ttl=60s",
                        "secret_id_num_uses=1"])
        let roleID = try server.cli(["read", "-field=role_id", "auth/approle/role/app/role-id"]).stdoutText
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let secretID = try server.cli(["write", "-f", "-field=secret_id", "auth/approle/role/app/secret-id"]).stdoutText
        let secretFile = try server.dir.write("secret-id", secretID)
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("approle-value")])
        let store = try vaultStore(server, "role_id = \"\(roleID)\"\nsecret_id_file = \"\(secretFile)\"")
        defer { store.close() }
        for _ in 0..<20 {
            #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("approle-value"))
        }
        // Past 2/3 of the 4 s TTL the next read renews; past the original TTL the renewed token still works.
        Thread.sleep(forTimeInterval: 3)
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("approle-value"))
        Thread.sleep(forTimeInterval: 2.5)
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("approle-value"))
    }

    @Test("an expired, non-renewable token: the store logs in again once and carries on")
    func reloginAfterExpiry() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try server.cli(["auth", "enable", "userpass"])
        let policy = try server.dir.write("reader.hcl", "path \"secret/*\" { capabilities = [\"read\", \"list\"] }\n")
        try server.cli(["policy", "write", "reader", policy])
        try server.cli(["write", "auth/userpass/users/alice", "password=fake-pass", "token_policies=reader",
                        "token_ttl=2s", "token_max_ttl=2s"])
        let passwordFile = try server.dir.write("password", "fake-pass\n")
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("userpass-value")])
        let store = try vaultStore(server, "username = \"alice\"\npassword_file = \"\(passwordFile)\"")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("userpass-value"))
        Thread.sleep(forTimeInterval: 3)
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("userpass-value"))

        let wrong = try server.dir.write("wrong", "not-the-password\n")
        let refused = try vaultStore(server, "username = \"alice\"\npassword_file = \"\(wrong)\"")
        defer { refused.close() }
        do {
            _ = try refused.value(of: "PASSWORD", layers: ["production"], at: nil)
            Issue.record("a wrong password must fail")
        } catch {
            #expect(error.errno == EACCES)
            #expect(!error.description.contains("not-the-password"))
        }
    }

    @Test("a token without access: 403 after one re-login is EACCES; a missing secret is nil (ENOENT)")
    func forbidden() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("x")])
        let weak = try server.cli(["token", "create", "-policy=default", "-field=token"]).stdoutText
        let token = try server.dir.write("token", weak)
        let store = try vaultStore(server, "token_file = \"\(token)\"")
        defer { store.close() }
        do {
            _ = try store.value(of: "PASSWORD", layers: ["production"], at: nil)
            Issue.record("the default policy must not read secret/")
        } catch {
            #expect(error.errno == EACCES)
            #expect(!error.description.contains(weak.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let root = try server.dir.write("root", "root\n")
        let allowed = try vaultStore(server, "token_file = \"\(root)\"")
        defer { allowed.close() }
        #expect(try allowed.fields(of: "staging", at: nil) == nil)
    }

    @Test("a read-only policy without list still reads every layer; a new global env overrides within a second")
    func layersAndListing() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("env-value")])
        try dynaconfWrite(server, env: "default", ["ONLY_DEFAULT": .string("d")])
        let policy = try server.dir.write("read.hcl", "path \"secret/data/*\" { capabilities = [\"read\"] }\n")
        try server.cli(["policy", "write", "readonly", policy])
        let readOnly = try server.cli(["token", "create", "-policy=readonly", "-field=token"]).stdoutText
        let readOnlyFile = try server.dir.write("readonly-token", readOnly)
        let limited = try vaultStore(server, "token_file = \"\(readOnlyFile)\"")
        defer { limited.close() }
        let layers = ["global", "production", "dynaconf", "default"]
        #expect(try limited.value(of: "PASSWORD", layers: layers, at: nil) == .string("env-value"))
        #expect(try limited.value(of: "ONLY_DEFAULT", layers: layers, at: nil) == .string("d"))

        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: layers, at: nil) == .string("env-value"))
        try dynaconfWrite(server, env: "global", ["PASSWORD": .string("global-value")])
        Thread.sleep(forTimeInterval: VaultStore.envListingMaxAge + 0.2)
        #expect(try store.value(of: "PASSWORD", layers: layers, at: nil) == .string("global-value"))
        // A change inside an existing env shows at once.
        try dynaconfWrite(server, env: "global", ["PASSWORD": .string("global-2")])
        #expect(try store.value(of: "PASSWORD", layers: layers, at: nil) == .string("global-2"))
    }

    @Test("TLS with the dev server's CA; without it the store fails")
    func tls() throws {
        let server = try BaoServer(tls: true)
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("over-tls")])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"\nca_cert = \"\(server.caFile)\"")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("over-tls"))
        let untrusted = try vaultStore(server, "token_file = \"\(token)\"")
        defer { untrusted.close() }
        #expect(throws: SecretsError.self) { try untrusted.value(of: "PASSWORD", layers: ["production"], at: nil) }
    }

    @Test("skip_verify / VAULT_SKIP_VERIFY turn TLS verification off, with a loud warning")
    func skipVerify() throws {
        let server = try BaoServer(tls: true)
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("unverified")])
        let token = try server.dir.write("token", "root\n")
        let recorder = RecordingLogHandler.Storage()
        let config = try Config.parse(
            text: "[stores.v]\ntype = \"vault\"\naddress = \"\(server.address)\"\ntoken_file = \"\(token)\"\nskip_verify = true\n",
            file: "c.toml")
        let store = try VaultStore(
            config: try #require(config.stores.first),
            logger: Logger(label: "test") { _ in RecordingLogHandler(storage: recorder) })
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("unverified"))
        #expect(recorder.messages.withLock { $0 }.contains { $0.contains("TLS certificate verification is OFF") })
        let fromEnvironment = try VaultSettings(
            config: try #require(config.stores.first).withoutKey("skip_verify"), environment: ["VAULT_SKIP_VERIFY": "true"])
        #expect(fromEnvironment.skipVerify)
    }

    @Test("namespaces: X-Vault-Namespace selects the namespace's mounts")
    func namespaces() throws {
        let server = try BaoServer()
        defer { server.remove() }
        #expect(try server.http("POST", "/v1/sys/namespaces/team", body: "{}").status == 200)
        try server.cli(["secrets", "enable", "-ns=team", "-path=secret", "kv-v2"])
        try server.cli(["kv", "put", "-ns=team", "secret/dynaconf/production", "PASSWORD=team-value"])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"\nnamespace = \"team\"")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("team-value"))
    }

    @Test("one bound per operation: a frozen server fails a cold store's first read (token lookup, KV version, LIST, GETs) within timeout + 100 ms")
    func oneBoundPerOperation() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("bounded")])
        try dynaconfWrite(server, env: "default", ["PORT": .int(1)])
        let token = try server.dir.write("token", "root\n")
        // Each store is new: nothing looked up or listed yet, so its first call needs every request.
        let stores = try (0..<3).map { _ in try vaultStore(server, "token_file = \"\(token)\"\ntimeout = \"1s\"") }
        defer { stores.forEach { $0.close() } }
        server.pause()
        defer { server.resume() }
        let calls: [(String, () throws -> Void)] = [
            ("value(of:) over four layers", { _ = try stores[0].value(of: "PASSWORD", layers: ["global", "production", "dynaconf", "default"], at: nil) }),
            ("fields(of:)", { _ = try stores[1].fields(of: "production", at: nil) }),
            ("envs(at:)", { _ = try stores[2].envs(at: nil) }),
        ]
        for (what, call) in calls {
            let started = Date()
            #expect(throws: SecretsError.self, "\(what) on a frozen server") { try call() }
            let waited = Date().timeIntervalSince(started)
            #expect(waited >= 0.9 && waited < 1.1, "\(what): waited \(waited) s at timeout 1s")
        }
    }

    @Test("a hung server (SIGSTOP) times out after `timeout`, a stopped one fails at once: both EIO; back: values")
    func serverHungOrDown() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("before")])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"\ntimeout = \"1s\"")
        defer { store.close() }
        defer { server.resume() }
        let hung = try checkOutages(
            read: { try store.value(of: "PASSWORD", layers: ["production"], at: nil) }, pause: server.pause,
            resume: server.resume, stop: server.stop, restart: server.start,  // a dev server starts empty
            rewrite: { try dynaconfWrite(server, env: "production", ["PASSWORD": .string("after")]) })
        #expect(hung?.code == .timeout)
        #expect(!"\(hung.map { "\($0)" } ?? "")".contains("root"))
    }

    @Test("token sources after token_file: VAULT_TOKEN, BAO_TOKEN, ~/.vault-token; none is a clear EACCES")
    func tokenSources() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("from-env-token")])
        let home = try TemporaryDirectory()
        defer { home.remove() }
        let empty = try TemporaryDirectory()
        defer { empty.remove() }
        _ = try home.write(".vault-token", "root\n")
        // No address in the config: VAULT_ADDR, else BAO_ADDR.
        let config = try Config.parse(text: "[stores.v]\ntype = \"vault\"\n", file: "c.toml")
        let storeConfig = try #require(config.stores.first)
        for environment in [
            ["VAULT_ADDR": server.address, "VAULT_TOKEN": "root", "HOME": empty.path],
            ["BAO_ADDR": server.address, "BAO_TOKEN": "root", "HOME": empty.path],
            ["VAULT_ADDR": server.address, "HOME": home.path],
        ] {
            let store = try VaultStore(config: storeConfig, logger: Logger(label: "test"), environment: environment)
            defer { store.close() }
            #expect(store.settings.address == server.address)
            #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("from-env-token"),
                    "\(environment.keys.sorted())")
        }
        let none = try VaultStore(
            config: storeConfig, logger: Logger(label: "test"), environment: ["VAULT_ADDR": server.address, "HOME": empty.path])
        defer { none.close() }
        let error = #expect(throws: SecretsError.self) {
            try none.value(of: "PASSWORD", layers: ["production"], at: nil)
        }
        #expect(error?.code == .permissionDenied)
        #expect(error.map { SecretsError.errno(for: $0) } == EACCES)
        #expect("\(error.map { "\($0)" } ?? "")".contains("VAULT_TOKEN"))
        // A config without an address and none in the environment names the key to set.
        #expect(throws: LocatedError.self) {
            try VaultStore(config: storeConfig, logger: Logger(label: "test"), environment: [:])
        }
    }

    @Test("a sealed server answers 503: store unavailable (EIO), naming the status, never the token")
    func sealed() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["PASSWORD": .string("x")])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"\nkv_version = 2")
        defer { store.close() }
        #expect(try store.value(of: "PASSWORD", layers: ["production"], at: nil) == .string("x"))
        #expect(try server.http("PUT", "/v1/sys/seal").status == 204)
        for read in [
            { _ = try store.value(of: "PASSWORD", layers: ["production"], at: nil) },
            { _ = try store.fields(of: "production", at: nil) },
        ] as [() throws -> Void] {
            let error = #expect(throws: SecretsError.self) { try read() }
            #expect(error?.code == .storeUnavailable)
            #expect(error.map { SecretsError.errno(for: $0) } == EIO)
            #expect("\(error.map { "\($0)" } ?? "")".contains("503"))
            #expect(!"\(error.map { "\($0)" } ?? "")".contains("root"))
        }
    }

    @Test("the writer merges with check-and-set instead of replacing the secret")
    func writer() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["KEEP": .string("kept")])
        let token = try server.dir.write("token", "root\n")
        let store = try vaultStore(server, "token_file = \"\(token)\"")
        defer { store.close() }
        try store.write(env: "production", values: [("NEW", .string("added")), ("PORT", .int(5432))])
        #expect(try store.fields(of: "production", at: nil) == ["KEEP": .string("kept"), "NEW": .string("added"), "PORT": .int(5432)])
        try store.write(env: "fresh-env", values: [("A", .string("1"))])
        #expect(try store.fields(of: "fresh-env", at: nil) == ["A": .string("1")])
        let metadata = try server.http("GET", "/v1/secret/metadata/dynaconf/production")
        #expect(metadata.body.contains("\"current_version\":2"))
    }

    @Test("reused libcurl handles follow the URL, the token and the body of each request")
    func handleReuse() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "one", ["K": .string("first")])
        try dynaconfWrite(server, env: "two", ["K": .string("second")])
        let client = HTTPClient(settings: .init(timeout: 5, caFile: nil, skipVerify: false, addresses: [server.address]))
        defer { client.close() }
        let root = ["X-Vault-Token": "root"]
        func get(_ env: String, _ headers: [String: String]) throws -> (Int, String) {
            let response = try client.request("GET", "/v1/secret/data/dynaconf/\(env)", headers: headers)
            return (response.status, String(decoding: response.body, as: UTF8.self))
        }
        for _ in 0..<3 {
            let one = try get("one", root)
            #expect(one.0 == 200 && one.1.contains("first"))
            let two = try get("two", root)
            #expect(two.0 == 200 && two.1.contains("second"))
        }
        // Same URL, another token: the handle must send the new header.
        #expect(try get("one", ["X-Vault-Token": "not-a-token"]).0 == 403)
        #expect(try get("one", root).0 == 200)
        // A request with a body, then the same handle for a GET again.
        let post = try client.request(
            "POST", "/v1/secret/data/dynaconf/one", headers: root,
            body: Array(#"{"data": {"K": "third"}}"#.utf8))
        #expect(post.status == 200)
        let after = try get("one", root)
        #expect(after.0 == 200 && after.1.contains("third"))
    }

    @Test("cluster addresses: a dead node, a sealed node (503) and a standby's 307 are passed over; the answering node sticks; one switch, logged once")
    func addressRotation() throws {
        let server = try BaoServer()
        defer { server.remove() }
        try dynaconfWrite(server, env: "production", ["K": .string("v")])
        let sealed = try FakeRedisServer(reply: Array("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".utf8))
        defer { sealed.stop() }
        let standby = try FakeRedisServer(
            reply: Array("HTTP/1.1 307 Temporary Redirect\r\nLocation: \(server.address)/v1/secret/data/dynaconf/production\r\nContent-Length: 0\r\n\r\n".utf8))
        defer { standby.stop() }
        let dead = "http://127.0.0.1:\(try freePort())"
        let switches = Locked<[String]>([])
        let client = HTTPClient(
            settings: .init(
                timeout: 3, caFile: nil, skipVerify: false,
                addresses: [dead, "http://127.0.0.1:\(sealed.port)", "http://127.0.0.1:\(standby.port)"])
        ) { from, to, why in switches.withLock { $0.append("\(from) -> \(to): \(why)") } }
        defer { client.close() }
        for _ in 0..<5 {
            let response = try client.request("GET", "/v1/secret/data/dynaconf/production", headers: ["X-Vault-Token": "root"])
            #expect(response.status == 200 && String(decoding: response.body, as: UTF8.self).contains("\"K\":\"v\""))
        }
        #expect(client.candidates().first == server.address, "the node that answered is asked first")
        let logged = switches.withLock { $0 }
        #expect(logged.count == 1, "one switch for five requests: \(logged)")
        #expect(logged.first?.contains("307") == false && logged.first?.contains("redirected to \(server.address)") == true)
        #expect(!logged.joined().contains("root"), "never a token")
        // The batch path (several layers at once) takes the same way round.
        let batch = client.getAll(["/v1/secret/data/dynaconf/production", "/v1/secret/data/dynaconf/none"], headers: ["X-Vault-Token": "root"])
        #expect(batch.map { (try? $0.get())?.status } == [200, 404])
    }

    @Test("cluster addresses: a hung node and a dead one cost at most the store's timeout in all")
    func addressBound() throws {
        let hung = try FakeRedisServer(reply: nil)
        defer { hung.stop() }
        let client = HTTPClient(
            settings: .init(
                timeout: 1.5, caFile: nil, skipVerify: false,
                addresses: ["http://127.0.0.1:\(hung.port)", "http://127.0.0.1:\(try freePort())", "http://127.0.0.1:\(hung.port)/x"]))
        defer { client.close() }
        let begin = Date()
        #expect(throws: SecretsError.self) { try client.request("GET", "/v1/sys/health") }
        let elapsed = Date().timeIntervalSince(begin)
        #expect(elapsed < 2.5, "bounded by the timeout (1.5 s) plus slack, took \(elapsed)")
        // With one hung node first and a live one after it, the live one still answers within the bound.
        let server = try BaoServer()
        defer { server.remove() }
        let mixed = HTTPClient(
            settings: .init(timeout: 2, caFile: nil, skipVerify: false, addresses: ["http://127.0.0.1:\(hung.port)", server.address]))
        defer { mixed.close() }
        #expect(try mixed.request("GET", "/v1/sys/health").status == 200)
    }

    @Test("Kubernetes auth sends the role and the service-account JWT to auth/<mount>/login")
    func kubernetesRequest() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let jwt = try dir.write("token", "eyJhbGciOi.fake.jwt\n", mode: 0o644)
        let config = try Config.parse(
            text: "[stores.k]\ntype = \"vault\"\naddress = \"http://127.0.0.1:1\"\nrole = \"billing\"\njwt_file = \"\(jwt)\"\nauth_mount = \"k8s\"\n",
            file: "c.toml")
        let settings = try VaultSettings(config: try #require(config.stores.first))
        #expect(settings.auth == .kubernetes(role: "billing", jwtFile: jwt, mount: "k8s"))
        let manager = TokenManager(
            settings: settings, http: HTTPClient(settings: .init(timeout: 1, caFile: nil, skipVerify: false, addresses: ["http://127.0.0.1:1"])), store: "k",
            logger: Logger(label: "test"))
        let request = try #require(try manager.loginRequest())
        #expect(request.path == "/v1/auth/k8s/login")
        #expect(request.body == .table(["role": .string("billing"), "jwt": .string("eyJhbGciOi.fake.jwt")]))
        let defaults = try Config.parse(text: "[stores.k]\ntype = \"vault\"\naddress = \"http://x:1\"\nrole = \"r\"\n", file: "c.toml")
        #expect(try VaultSettings(config: try #require(defaults.stores.first)).auth
            == .kubernetes(role: "r", jwtFile: "/var/run/secrets/kubernetes.io/serviceaccount/token", mount: "kubernetes"))
    }
}

@Suite("Vault request building (no server)")
struct VaultRequestTests {
    @Test("settings: namespace, CA file and skip-verify default from VAULT_* (then BAO_*); the config wins")
    func environmentDefaults() throws {
        let bare = try #require(try Config.parse(text: "[stores.v]\ntype = \"vault\"\n", file: "/etc/s/c.toml").stores.first)
        let vault = try VaultSettings(config: bare, environment: [
            "VAULT_ADDR": "https://vault.internal:8200/", "VAULT_NAMESPACE": "team", "VAULT_CACERT": "/etc/ca.pem",
            "VAULT_SKIP_VERIFY": "1",
        ])
        #expect(vault.address == "https://vault.internal:8200")
        #expect(vault.namespace == "team" && vault.caCert == "/etc/ca.pem" && vault.skipVerify)
        #expect(vault.mount == "secret" && vault.path == "dynaconf" && vault.kvVersion == .auto && vault.timeout == 5)
        let bao = try VaultSettings(config: bare, environment: [
            "BAO_ADDR": "http://bao:8200", "BAO_NAMESPACE": "ops", "BAO_CACERT": "/etc/bao-ca.pem",
        ])
        #expect(bao.address == "http://bao:8200" && bao.namespace == "ops" && bao.caCert == "/etc/bao-ca.pem")
        #expect(!bao.skipVerify)
        let configured = try #require(try Config.parse(
            text: "[stores.v]\ntype = \"vault\"\naddress = \"https://a:1\"\nnamespace = \"mine\"\nca_cert = \"ca.pem\"\n",
            file: "/etc/s/c.toml").stores.first)
        let mine = try VaultSettings(config: configured, environment: [
            "VAULT_ADDR": "https://other:2", "VAULT_NAMESPACE": "team", "VAULT_CACERT": "/etc/ca.pem",
        ])
        #expect(mine.address == "https://a:1" && mine.namespace == "mine" && mine.caCert == "/etc/s/ca.pem")
    }


    @Test("path segments are percent-encoded byte by byte; `/` separates, empty segments are dropped")
    func escaping() {
        #expect(VaultStore.escape("dynaconf/production") == "dynaconf/production")
        #expect(VaultStore.escape("a b/ü?#%") == "a%20b/%C3%BC%3F%23%25")
        #expect(VaultStore.escape("/team//svc-1_x.~/") == "team/svc-1_x.~")
        #expect(VaultStore.escape("k:v@x+y=z,(1)!$&'*;") == "k:v@x+y=z,(1)!$&'*;")
        #expect(VaultStore.escape("日本") == "%E6%97%A5%E6%9C%AC")
    }
}

/// Collects log messages so tests can check what was logged.
struct RecordingLogHandler: LogHandler {
    final class Storage: Sendable {
        let messages = Locked<[String]>([])
    }

    let storage: Storage
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        storage.messages.withLock { $0.append(event.message.description) }
    }
}

extension StoreConfig {
    /// The same store table without one key (to test environment defaults).
    func withoutKey(_ key: String) throws -> StoreConfig {
        var values = section.values
        values.removeValue(forKey: key)
        let text = values.map { "\($0.key) = \($0.value.jsonText())" }.sorted().joined(separator: "\n")
        let parsed = try Config.parse(text: "[stores.\(name)]\n\(text)\n", file: "c.toml")
        guard let store = parsed.stores.first else { throw TestFailure.message("no store") }
        return store
    }
}
