import EnvStore
import Glibc
import SecretsCore
import StoreConformance
import Testing

@Suite("env store", .serialized)
struct EnvStoreTests {
    func store(prefix: String, envPrefix: String?) throws -> EnvStore {
        var text = "[stores.envs]\ntype = \"env\"\nprefix = \"\(prefix)\"\n"
        if let envPrefix { text += "env_prefix = \"\(envPrefix)\"\n" }
        let config = try Config.parse(text: text, file: "env.toml")
        return try EnvStore(config: try #require(config.store(named: "envs")))
    }

    @Test("passes the store conformance suite (values as strings: their bytes are what a file would hold)")
    func conformance() throws {
        let prefix = "SECRETSFS_T\(getpid())_DEFAULT__"
        let envPrefix = "SECRETSFS_T\(getpid())__"
        func variable(_ env: String, _ key: String) -> String {
            env == "default" ? prefix + key : envPrefix + env.uppercased() + "__" + key
        }
        for (env, fields) in StoreConformance.seed {
            for (key, value) in fields {
                setenv(variable(env, key), String(decoding: value.fileBytes().copyBytes(), as: UTF8.self), 1)
            }
        }
        defer {
            for (env, fields) in StoreConformance.seed { for key in fields.keys { unsetenv(variable(env, key)) } }
        }
        let conformance = StoreConformance(store: try store(prefix: prefix, envPrefix: envPrefix), stringsOnly: true) {
            env, key, value in
            setenv(variable(env, key), String(decoding: value.fileBytes().copyBytes(), as: UTF8.self), 1)
        }
        try conformance.checkConformance()
    }

    @Test("Prefect's layout: PREFECT__CONTEXT__SECRETS__FOO is FOO in every env; bad keys are config errors")
    func prefect() throws {
        setenv("PREFECT__CONTEXT__SECRETS__SLACK_TOKEN", "xoxb-not-real", 1)
        defer { unsetenv("PREFECT__CONTEXT__SECRETS__SLACK_TOKEN") }
        let config = try Config.parse(text: "[stores.prefect]\ntype = \"env\"\n", file: "env.toml")
        let store = try EnvStore(config: try #require(config.store(named: "prefect")))
        #expect(try store.envs(at: nil) == ["default"])
        #expect(try store.fields(of: "default", at: nil)?["SLACK_TOKEN"] == .string("xoxb-not-real"))
        #expect(try store.fields(of: "production", at: nil) == nil)
        let bad = try Config.parse(text: "[stores.prefect]\ntype = \"env\"\nsuffix = \"x\"\n", file: "env.toml")
        #expect(throws: LocatedError.self) { try EnvStore(config: try #require(bad.store(named: "prefect"))) }
    }
}
