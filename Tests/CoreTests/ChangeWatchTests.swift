import Locking
import SecretsCore
import Testing

/// `ChangeWatch` (run --watch, secretsfs watch) over the fake store: changes from the store's notices, versions that
/// change with the value, env targets that see keys come and go, access rules, a failing read.
@Suite("change watch")
struct ChangeWatchTests {
    final class Seen: Sendable {
        let changes = Locked<[ChangeWatch.Change]>([])
        let failures = Locked<[String]>([])
    }

    @Test("a notice re-reads the targets and reports each changed path once, with versions, never values")
    func reports() throws {
        let store = FakeStore(name: "fake", envs: ["production": ["A": .string("a-1"), "B": .int(1), "HIDDEN": .string("h")]])
        let config = try makeConfig("""

            [[access]]
            path = "fake/production/HIDDEN"
            allow = ["uid:4242"]
            [[files]]
            path = "fake/production/t.txt"
            template = "{{A}}"
            """)
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let seen = Seen()
        let policy = AccessPolicy(config: config)
        let watch = ChangeWatch(
            resolver: resolver,
            targets: [.init(top: "fake", env: "production", key: "A"), .init(top: "fake", env: "production", key: nil)],
            allowed: { path in policy.allows(Caller(uid: 1000, gid: 1000, pid: 1), top: path.top, env: path.env, key: path.key, details: { CallerDetails(exe: nil, cgroup: nil, groups: []) }) },
            onChange: { changes in seen.changes.withLock { $0 += changes } })
        #expect(watch.start(config: config, stores: ["fake": store], poll: 60) == ["fake"])
        #expect(watch.current?.keys.sorted() == ["fake/production/A", "fake/production/B", "fake/production/t.txt"], "HIDDEN left out")
        let before = try #require(watch.current?["fake/production/A"])
        #expect(before.count == 16 && before != "a-1")
        store.set("production", "A", .string("a-2"))
        let changes = seen.changes.withLock { $0 }
        #expect(changes.map(\.path) == ["fake/production/A", "fake/production/t.txt"], "the key and the template that uses it")
        #expect(changes[0].old == before && changes[0].new != before && changes[0].new != nil)
        store.set("production", "HIDDEN", .string("h-2"))
        #expect(seen.changes.withLock { $0.count } == 2, "a path this caller may not read is never reported")
        store.set("production", "C", .string("c"))
        store.set("production", "B", nil)
        let last = seen.changes.withLock { Array($0.suffix(2)) }
        #expect(last[0].path == "fake/production/C" && last[0].old == nil && last[0].new != nil)
        #expect(last[1].path == "fake/production/B" && last[1].old != nil && last[1].new == nil)
        // The same bytes give the same version in this process; other bytes another.
        #expect(ChangeWatch.version(of: SecretBytes(string: "x")) == ChangeWatch.version(of: SecretBytes(string: "x")))
        #expect(ChangeWatch.version(of: SecretBytes(string: "x")) != ChangeWatch.version(of: SecretBytes(string: "y")))
        watch.stop()
        store.set("production", "A", .string("a-3"))
        #expect(seen.changes.withLock { $0.count } == 4, "nothing after stop")
    }
}
