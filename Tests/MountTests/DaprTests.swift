import Foundation
import Testing
import TestSupport

/// The Dapr secrets API over HTTP (`[api] dapr_http`), with curl. (The gRPC side and the Python SDK are not built yet.)
@Suite("Dapr HTTP API", .serialized)
struct DaprTests {
    @Test("GET secret and bulk, token, allowed/denied, metadata.env, status codes, a fresh key rotated between calls")
    func http() throws {
        let curl = try requireTool("curl")
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted(
            "secrets.toml.age", "[production]\nDB_PASS = \"dapr-1\"\nADMIN_KEY = \"no\"\n[staging]\nDB_PASS = \"stage-1\"\n")
        let token = try fixture.dir.write("api-token", "t0ken\n")
        let port = try freePort()
        let config = try fixture.writeConfig(fresh: ["DB_*"], extra: """
            [api]
            dapr_http = "127.0.0.1:\(port)"
            token_file = "\(token)"
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
        #expect(try get("/v1.0/secrets/local/DB_PASS") == ("200", #"{"DB_PASS":"dapr-1"}"#))
        #expect(try get("/v1.0/secrets/local/DB_PASS?metadata.env=staging") == ("200", #"{"DB_PASS":"stage-1"}"#))
        #expect(try get("/v1.0/secrets/local/bulk") == ("200", #"{"DB_PASS":{"DB_PASS":"dapr-1"}}"#), "denied names are left out")
        #expect(try get("/v1.0/secrets/local/ADMIN_KEY").0 == "403")
        #expect(try get("/v1.0/secrets/local/NOPE").0 == "404")
        #expect(try get("/v1.0/secrets/nostore/DB_PASS").0 == "400")
        #expect(try get("/v1.0/secrets/local/DB_PASS", token: nil).0 == "401")
        #expect(try get("/v1.0/secrets/local/DB_PASS", token: "wrong").0 == "401")
        // Fresh through the API: a rotation shows on the next call.
        try fixture.writeEncrypted(
            "secrets.toml.age", "[production]\nDB_PASS = \"dapr-2\"\nADMIN_KEY = \"no\"\n")
        #expect(try get("/v1.0/secrets/local/DB_PASS") == ("200", #"{"DB_PASS":"dapr-2"}"#))
        #expect(!fs.log.contains("dapr-1") && !fs.log.contains("dapr-2"))
    }
}
