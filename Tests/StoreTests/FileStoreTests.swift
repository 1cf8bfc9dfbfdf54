import Age
import FileStore
import Foundation
import Logging
import SecretsCore
import StoreConformance
import Locking
import Testing
import TestSupport

/// Renders seed data as TOML, JSON or YAML text (test-only, simple values).
enum SeedWriter {
    static func toml(_ data: [String: [String: SecretValue]]) -> String {
        var out = ""
        for env in data.keys.sorted() {
            out += "[\(env)]\n"
            for (key, value) in data[env, default: [:]].sorted(by: { $0.key < $1.key }) {
                out += "\"\(key)\" = \(tomlValue(value))\n"
            }
        }
        return out
    }

    static func tomlValue(_ value: SecretValue) -> String {
        switch value {
        case .table(let fields):
            return "{ " + fields.sorted { $0.key < $1.key }.map { "\($0.key) = \(tomlValue($0.value))" }.joined(separator: ", ") + " }"
        default:
            return value.jsonText()
        }
    }

    static func json(_ data: [String: [String: SecretValue]]) -> String {
        SecretValue.table(data.mapValues { SecretValue.table($0) }).jsonText()
    }

    static func yaml(_ data: [String: [String: SecretValue]]) -> String {
        var out = ""
        for env in data.keys.sorted() {
            out += "\(env):\n"
            for (key, value) in data[env, default: [:]].sorted(by: { $0.key < $1.key }) {
                out += "  \"\(key)\": \(value.jsonText())\n"
            }
        }
        return out
    }
}

@Suite("file store")
struct FileStoreTests {
    func makeStore(name fileName: String, render: @escaping @Sendable ([String: [String: SecretValue]]) -> String) throws
        -> (StoreConformance, TemporaryDirectory)
    {
        let dir = try TemporaryDirectory()
        let identity = X25519Identity.generate()
        _ = try dir.write("identity.txt", identity.secretString + "\n")
        let data = Locked(StoreConformance.seed)
        let path = dir.file(fileName)
        let write: @Sendable () throws -> Void = {
            let text = render(data.withLock { $0 })
            let sealed = try AgeFile.encrypt(Array(text.utf8), to: [.x25519(identity.recipient)])
            try Data(sealed).write(to: URL(fileURLWithPath: path + ".tmp"))
            rename(path + ".tmp", path)
        }
        try write()
        let config = try Config.parse(
            text: "[stores.local]\ntype = \"file\"\nfiles = [\"\(path)\"]\nidentity = \"\(dir.file("identity.txt"))\"\n",
            file: dir.file("config.toml"))
        let storeConfig = try #require(config.stores.first)
        let store = try FileStore(config: storeConfig, logger: Logger(label: "test"))
        let witness = { () throws -> any SecretStore in try FileStore(config: storeConfig, logger: Logger(label: "test")) }
        let conformance = StoreConformance(store: store, witness: witness) { env, key, value in
            data.withLock { $0[env, default: [:]][key] = value }
            try write()
        }
        return (conformance, dir)
    }

    @Test("passes the store conformance suite", arguments: ["s.toml.age", "s.json.age", "s.yaml.age"])
    func conformance(fileName: String) throws {
        let render: @Sendable ([String: [String: SecretValue]]) -> String =
            fileName.contains("json") ? SeedWriter.json : fileName.contains("yaml") ? SeedWriter.yaml : SeedWriter.toml
        let (suite, dir) = try makeStore(name: fileName, render: render)
        defer { dir.remove() }
        try suite.checkConformance()
    }

    @Test("a file replaced after it was read but before watch started is reported when the watch starts")
    func changeBeforeWatch() throws {
        let (suite, dir) = try makeStore(name: "s.toml.age", render: SeedWriter.toml)
        defer { dir.remove() }
        defer { suite.store.close() }
        #expect(try suite.store.fields(of: "production", at: nil) != nil)
        try suite.change("production", "PASSWORD", .string("changed-before-watch"))
        let reported = Locked<[StoreChange]>([])
        #expect(suite.store.watch(locations: []) { changes in reported.withLock { $0 += changes } })
        #expect(reported.withLock { $0 } == [.at(location: nil, env: nil)], "the missed replacement is reported at once")
    }

    @Test("an identity file readable by others is refused with a clear message")
    func identityPermissions() throws {
        let (suite, dir) = try makeStore(name: "s.toml.age", render: SeedWriter.toml)
        defer { dir.remove() }
        chmod(dir.file("identity.txt"), 0o644)
        do {
            _ = try suite.store.envs(at: nil)
            Issue.record("a world-readable identity must be refused")
        } catch {
            #expect(error.description.contains("must be 0600 or stricter"))
        }
    }

    @Test("scrypt: a passphrase_file store opens files encrypted with a passphrase, and refuses a wrong one")
    func passphraseStore() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let passphrase = try dir.write("passphrase.txt", "correct horse\n")
        let sealed = try AgeFile.encrypt(
            Array("[production]\nTOKEN = \"fake-token\"\n".utf8),
            to: [.scrypt(passphrase: Array("correct horse".utf8), workFactor: 10)])
        let file = dir.file("s.toml.age")
        try Data(sealed).write(to: URL(fileURLWithPath: file))
        let config = try Config.parse(
            text: "[stores.p]\ntype = \"file\"\nfiles = [\"\(file)\"]\npassphrase_file = \"\(passphrase)\"\n", file: "c.toml")
        let store = try FileStore(config: try #require(config.stores.first), logger: Logger(label: "test"))
        #expect(try store.value(of: "TOKEN", layers: ["production"], at: nil) == .string("fake-token"))

        _ = try dir.write("passphrase.txt", "wrong horse\n")
        // Identities are read when a file is (re)loaded: the unchanged file is still served from its parsed copy...
        #expect(try store.value(of: "TOKEN", layers: ["production"], at: nil) == .string("fake-token"))
        // ...and the next version of the file, which needs the passphrase again, fails with the wrong one.
        let resealed = try AgeFile.encrypt(
            Array("[production]\nTOKEN = \"other\"\n".utf8),
            to: [.scrypt(passphrase: Array("correct horse".utf8), workFactor: 10)])
        try Data(resealed).write(to: URL(fileURLWithPath: file))
        #expect(throws: SecretsError.self) { try store.value(of: "TOKEN", layers: ["production"], at: nil) }
    }

    @Test("later files override earlier ones key by key")
    func fileOrder() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try dir.write("a.toml", "[production]\nA = \"first\"\nB = \"first\"\n")
        let second = try dir.write("b.toml", "[production]\nb = \"second\"\n")
        let config = try Config.parse(
            text: "[stores.l]\ntype = \"file\"\nfiles = [\"\(first)\", \"\(second)\"]\nidentity = \"x\"\n", file: "c.toml")
        let store = try FileStore(config: try #require(config.stores.first), logger: Logger(label: "test"))
        let fields = try #require(try store.fields(of: "production", at: nil))
        #expect(fields == ["A": .string("first"), "b": .string("second")])
    }

    @Test("setting keys keeps other keys and replaces any spelling of the same key")
    func settingKeys() throws {
        let original = Array("[production]\npassword = \"old\"\nKEEP = 1\n".utf8)
        let updated = try FileStore.settingKeys([("PASSWORD", "new"), ("NEW", "x")], env: "Production", in: original, file: "s.toml")
        let envs = try TOMLDocument(file: "s.toml", text: String(decoding: updated, as: UTF8.self)).root
        #expect(envs["production"] == .table(["PASSWORD": .string("new"), "KEEP": .int(1), "NEW": .string("x")]))
    }
}
