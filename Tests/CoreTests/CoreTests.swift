import Dispatch
import Glibc
import Logging
import Locking
import Testing
import TestSupport

@testable import SecretsCore

@Suite("values")
struct ValueTests {
    @Test("strings are exact bytes; other values are compact JSON with sorted keys")
    func rendering() {
        #expect(SecretValue.string("0x1F").fileBytes().copyBytes() == Array("0x1F".utf8))
        #expect(SecretValue.string("").fileBytes().count == 0)
        #expect(SecretValue.int(1234).jsonText() == "1234")
        #expect(SecretValue.float(1.5).jsonText() == "1.5")
        #expect(SecretValue.bool(true).jsonText() == "true")
        #expect(SecretValue.null.jsonText() == "null")
        #expect(SecretValue.table(["b": .int(1), "a": .array([.string("x\"y"), .null])]).jsonText() == #"{"a":["x\"y",null],"b":1}"#)
        #expect(SecretValue.string("line\nbreak\u{1}").jsonText() == #""line\nbreak\u0001""#)
    }

    @Test("JSON: strict parsing, integers apart from floats, escapes and UTF-8 checked")
    func json() {
        func parse(_ text: String) -> SecretValue? { SecretValue.parseJSON(Array(text.utf8)) }
        #expect(parse(#"{"data": {"data": {"K": "v"}, "metadata": {"version": 3}}}"#)
            == .table(["data": .table(["data": .table(["K": .string("v")]), "metadata": .table(["version": .int(3)])])]))
        #expect(parse(#"[1, -2, 1.5, 1e3, true, false, null, "", {}, []]"#)
            == .array([.int(1), .int(-2), .float(1.5), .float(1000), .bool(true), .bool(false), .null, .string(""),
                       .table([:]), .array([])]))
        #expect(parse(#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#) == .string("a\"b\\c/d\n\té😀"))
        #expect(parse(#""plain then \u0041 escape""#) == .string("plain then A escape"))
        #expect(parse("\"日本語 ✓\"") == .string("日本語 ✓"))
        #expect(parse(#"9223372036854775807"#) == .int(Int64.max))
        for bad in [#"{"a" 1}"#, #"[1,]"#, #"[1 2]"#, #"{"a":1} x"#, "\"tab\there\"", #""\x""#, #""\ud83d""#,
                    #""open"#, "tru", "nul", "", "-", #"{"a":1,}"#, String(repeating: "[", count: 600)] {
            #expect(parse(bad) == nil, "accepted: \(bad.prefix(20))")
        }
        #expect(SecretValue.parseJSON([0x22, 0xFF, 0xFE, 0x22]) == nil)  // invalid UTF-8 inside a string
    }

    @Test("systemd notifications reach a path socket and an abstract one; no socket: nothing sent")
    func systemdNotify() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        for name in [dir.file("notify.sock"), "@secretsfs-test-\(getpid())"] {
            let socket = try NotifySocket(name: name)
            defer { socket.close() }
            #expect(SystemdNotify.send("READY=1\nSTATUS=serving /secrets", socket: name))
            #expect(try socket.receive(timeout: 5) == "READY=1\nSTATUS=serving /secrets")
        }
        #expect(!SystemdNotify.send("READY=1", socket: ""))
        #expect(!SystemdNotify.send("READY=1", socket: dir.file("nobody-listens.sock")))
    }

    @Test("secret bytes never print their content")
    func redaction() {
        let secret = SecretBytes(string: "hunter2-fake")
        #expect("\(secret)" == "<redacted>")
        #expect(!String(reflecting: secret).contains("hunter2"))
        #expect(!"\(SecretValue.string("hunter2-fake"))".contains("hunter2"))
        #expect(secret == SecretBytes(string: "hunter2-fake"))
        #expect(secret != SecretBytes(string: "hunter3-fake"))
    }

    @Test("globs: *, ?, classes, case-insensitive", arguments: [
        ("DB_*", "DB_HOST", true), ("DB_*", "db_host", true), ("DB_*", "XDB_HOST", false), ("MYSQL_HOST", "MYSQL_HOST", true),
        ("?ORT", "PORT", true), ("?ORT", "SPORT", false), ("[AB]_*", "B_X", true), ("[!AB]_*", "B_X", false),
        ("*_KEY", "API_KEY", true), ("*", "", true), ("A*B*C", "AxxBxxC", true), ("A*B*C", "AxxBxx", false),
    ])
    func globs(pattern: String, name: String, expected: Bool) {
        #expect(Glob(pattern).matches(name) == expected)
    }

    @Test("durations")
    func durations() {
        #expect(ConfigSection.parseDuration("5m") == 300)
        #expect(ConfigSection.parseDuration("500ms") == 0.5)
        #expect(ConfigSection.parseDuration("2h") == 7200)
        #expect(ConfigSection.parseDuration("0") == 0)
        #expect(ConfigSection.parseDuration("soon") == nil)
        #expect(ConfigSection.parseDuration("-1s") == nil)
    }
}

@Suite("config")
struct ConfigTests {
    @Test("scope locations of a store: each chain path once, in config order")
    func scopeLocations() throws {
        let config = try Config.parse(text: """
            [stores.a]
            type = "fake"
            [stores.b]
            type = "fake"
            [scopes.one]
            chain = [{ store = "a", path = "x" }, { store = "b", path = "y" }, "a"]
            [scopes.two]
            chain = [{ store = "a", path = "z" }, { store = "a", path = "x" }]
            """, file: "c.toml")
        #expect(config.scopeLocations(of: "a") == ["x", "z"])
        #expect(config.scopeLocations(of: "b") == ["y"])
        #expect(config.scopeLocations(of: "c") == [])
    }

    @Test("defaults and documented keys")
    func defaults() throws {
        let config = try Config.parse(
            text: "[stores.local]\ntype = \"file\"\nfiles = [\"a.age\"]\n[scopes.app]\nchain = [\"local\", { store = \"local\", path = \"b.age\" }]\n",
            file: "/etc/secretsfs/config.toml")
        #expect(config.mount.path == "/secrets")
        #expect(config.mount.fileMode == 0o400 && config.mount.dirMode == 0o500)
        #expect(config.mount.noOpen && config.mount.autoUnmount && !config.mount.allowOther)
        #expect(config.cache.ttl == 300)
        #expect(
            config.scopes.first?.chain == [
                ChainElement(store: "local"), ChainElement(store: "local", path: "b.age", level: "local-2"),
            ])
        #expect(config.stores.first?.section.directory == "/etc/secretsfs")
    }

    @Test("errors point at file, line and column", arguments: [
        ("[mount]\npath = 5\n[stores.a]\ntype = \"file\"\n", "c.toml:2:1", "mount.path"),
        ("[mount]\nfile_mode = \"0999\"\n[stores.a]\ntype = \"file\"\n", "c.toml:2:1", "octal"),
        ("[cache]\nttl = \"soon\"\n[stores.a]\ntype = \"file\"\n", "c.toml:2:1", "duration"),
        ("[stores.a]\ntype = \"file\"\n\n[scopes.s]\nchain = [\"missing\"]\n", "c.toml:5:1", "missing"),
        ("[stores.a]\ntype = \"file\"\n[scopes.a]\nchain = [\"a\"]\n", "c.toml:3:1", "same name"),
        ("[mount]\nbogus = 1\n[stores.a]\ntype = \"file\"\n", "c.toml:2:1", "unknown key 'mount.bogus'"),
        ("[mount]\npath = \"/x\"\n", "c.toml:1:1", "no stores"),
        ("[mount\n", "c.toml:1:", "TOML syntax error"),
        ("[stores.\"a/b\"]\ntype = \"file\"\n", "c.toml:1:1", "directory name"),
        ("[cache]\npersist_identity = \"k.txt\"\n[stores.a]\ntype = \"file\"\n", "c.toml:2:1", "'cache.persist' is not"),
    ])
    func locatedErrors(text: String, location: String, fragment: String) {
        do {
            _ = try Config.parse(text: text, file: "c.toml")
            Issue.record("config should not parse")
        } catch {
            #expect(error.description.hasPrefix(location), "got: \(error)")
            #expect(error.description.contains(fragment), "got: \(error)")
        }
    }
}

@Suite("resolver")
struct ResolverTests {
    let store = FakeStore(
        name: "fake",
        envs: [
            "default": ["A": .string("default-a"), "B": .string("default-b"), "PORT": .int(1)],
            "dynaconf": ["B": .string("dynaconf-b")],
            "production": ["B": .string("prod-b"), "C": .string("prod-c"), "password": .string("lower")],
            "global": ["C": .string("global-c")],
        ],
        locations: ["svc": ["production": ["A": .string("svc-a")]]])

    func resolver(_ extra: String = "") throws -> Resolver {
        let config = try makeConfig(extra)
        return try Resolver(config: config, stores: ["fake": store])
    }

    @Test("Dynaconf layering: global over env over dynaconf over default")
    func layering() throws {
        let resolver = try resolver()
        #expect(try resolver.resolve(top: "fake", env: "production", key: "A") == .string("default-a"))
        #expect(try resolver.resolve(top: "fake", env: "production", key: "B") == .string("prod-b"))
        #expect(try resolver.resolve(top: "fake", env: "staging", key: "B") == .string("dynaconf-b"))
        #expect(try resolver.resolve(top: "fake", env: "production", key: "C") == .string("global-c"))
        #expect(try resolver.resolve(top: "fake", env: "default", key: "C") == nil)
        #expect(try resolver.resolve(top: "fake", env: "production", key: "PASSWORD") == .string("lower"))
        #expect(try resolver.keys(top: "fake", env: "production") == ["A", "B", "C", "PORT", "password"])
        #expect(try resolver.envs(top: "fake") == ["default", "dynaconf", "global", "production"])
        #expect(try resolver.canonicalEnv(top: "fake", env: "PRODUCTION") == "production")
        #expect(try resolver.canonicalEnv(top: "fake", env: "staging") == nil)
    }

    @Test("scope chain: the first element that has the key wins")
    func scopes() throws {
        let resolver = try resolver("[scopes.app]\nchain = [{ store = \"fake\", path = \"svc\" }, \"fake\"]\nfresh = [\"A\"]\n")
        #expect(try resolver.resolve(top: "app", env: "production", key: "A") == .string("svc-a"))
        #expect(try resolver.resolve(top: "app", env: "production", key: "B") == .string("prod-b"))
        #expect(resolver.isFresh(top: "app", key: "a"))
        #expect(!resolver.isFresh(top: "fake", key: "A"))
        #expect(resolver.isFresh(top: "fake", key: "FRESH_X"))
    }
}

@Suite("filesystem core")
struct FileSystemCoreTests {
    let store = FakeStore(name: "fake", envs: ["production": ["CACHED": .string("v1"), "FRESH_X": .string("f1")]])
    let clock = FakeClock()

    func core(ttl: String = "60s", stale: String = "30s") throws -> FileSystemCore {
        let config = try makeConfig(ttl: ttl, stale: stale)
        let resolver = try Resolver(config: config, stores: ["fake": store])
        return FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"), clock: clock.function)
    }

    func envInode(_ core: FileSystemCore) throws -> UInt64 {
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "fake")
        return try core.lookup(parent: top.attributes.inode, name: "production").attributes.inode
    }

    @Test("a cached key is served from the cache until its ttl, then fetched again")
    func cachedUntilTTL() throws {
        let core = try core()
        let env = try envInode(core)
        let first = try core.lookup(parent: env, name: "CACHED")
        #expect(first.entryTimeout == 60)
        let calls = store.calls.withLock { $0 }
        store.set("production", "CACHED", .string("v2"))
        clock.advance(30)
        let second = try core.lookup(parent: env, name: "CACHED")
        #expect(store.calls.withLock { $0 } == calls)
        #expect(second.attributes.inode == first.attributes.inode)
        #expect(second.entryTimeout == 30)
        clock.advance(31)
        let third = try core.lookup(parent: env, name: "CACHED")
        #expect(store.calls.withLock { $0 } > calls)
        #expect(third.attributes.inode != first.attributes.inode)
        #expect(try core.contents(third.attributes.inode).copyBytes() == Array("v2".utf8))
        // The old snapshot stays readable while the kernel holds it.
        #expect(try core.contents(first.attributes.inode).copyBytes() == Array("v1".utf8))
    }

    @Test("a fresh key goes to the store on every lookup, keeps its inode while unchanged, gets a new one on change")
    func freshEveryLookup() throws {
        let core = try core()
        let env = try envInode(core)
        let first = try core.lookup(parent: env, name: "FRESH_X")
        #expect(first.entryTimeout == 0)
        let calls = store.calls.withLock { $0 }
        let again = try core.lookup(parent: env, name: "FRESH_X")
        #expect(store.calls.withLock { $0 } > calls)
        #expect(again.attributes.inode == first.attributes.inode)
        store.set("production", "FRESH_X", .string("f2-longer"))
        let changed = try core.lookup(parent: env, name: "FRESH_X")
        #expect(changed.attributes.inode != first.attributes.inode)
        #expect(changed.attributes.size == 9)
    }

    @Test("forget releases an inode once the kernel drops every reference")
    func forget() throws {
        let core = try core()
        let env = try envInode(core)
        let entry = try core.lookup(parent: env, name: "FRESH_X")
        _ = try core.lookup(parent: env, name: "FRESH_X")
        core.forget(entry.attributes.inode, count: 1)
        #expect(core.isFile(entry.attributes.inode))
        core.forget(entry.attributes.inode, count: 1)
        #expect(!core.isFile(entry.attributes.inode))
        #expect(throws: SecretsError.self) { try core.contents(entry.attributes.inode) }
    }

    @Test("a failing store: cached values served within stale_if_error, EIO after; fresh keys fail at once")
    func staleOnError() throws {
        let core = try core(ttl: "10s", stale: "30s")
        let env = try envInode(core)
        _ = try core.lookup(parent: env, name: "CACHED")
        _ = try core.lookup(parent: env, name: "FRESH_X")
        store.failing.withLock { $0 = true }
        clock.advance(20)
        #expect(try core.contents(try core.lookup(parent: env, name: "CACHED").attributes.inode).copyBytes() == Array("v1".utf8))
        // The env directory is walked again (its listing fails): an env seen before stays; an unseen one does not.
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        #expect(try core.lookup(parent: top, name: "production").attributes.inode == env)
        #expect(throws: SecretsError.self) { try core.lookup(parent: top, name: "staging") }
        do {
            _ = try core.lookup(parent: env, name: "FRESH_X")
            Issue.record("fresh lookup should fail")
        } catch {
            #expect(error.errno == EIO)
        }
        clock.advance(30)
        do {
            _ = try core.lookup(parent: env, name: "CACHED")
            Issue.record("stale window is over")
        } catch {
            #expect(error.errno == EIO)
        }
    }

    @Test("stale_if_error = 0: a failing store fails its env directories and cached keys at once")
    func noStale() throws {
        let core = try core(ttl: "10s", stale: "0s")
        let env = try envInode(core)
        _ = try core.lookup(parent: env, name: "CACHED")
        store.failing.withLock { $0 = true }
        clock.advance(11)
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        #expect(throws: SecretsError.self) { try core.lookup(parent: top, name: "production") }
        #expect(throws: SecretsError.self) { try core.lookup(parent: env, name: "CACHED") }
    }

    @Test("ENOENT for missing keys, envs and stores; attributes from the config")
    func notFoundAndAttributes() throws {
        let core = try core()
        let env = try envInode(core)
        #expect(throws: SecretsError.self) { try core.lookup(parent: env, name: "MISSING") }
        #expect(throws: SecretsError.self) { try core.lookup(parent: FileSystemCore.rootInode, name: "nope") }
        let entry = try core.lookup(parent: env, name: "CACHED")
        #expect(entry.attributes.uid == 7 && entry.attributes.gid == 8 && entry.attributes.mode == 0o400)
        #expect(try core.list(env).map(\.name) == ["CACHED", "FRESH_X"])
        #expect(try core.list(FileSystemCore.rootInode).map(\.name) == ["fake"])
    }

    @Test("concurrent lookups while a fresh value changes: every reply's inode holds the snapshot its size describes")
    func concurrentLookups() throws {
        let core = try core()
        let env = try envInode(core)
        let store = self.store
        let failures = Locked(0)
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            for round in 0..<300 {
                if worker == 0 { store.set("production", "FRESH_X", .string(String(repeating: "x", count: round % 7 + 1))) }
                guard let entry = try? core.lookup(parent: env, name: "FRESH_X"),
                    let bytes = try? core.contents(entry.attributes.inode)
                else {
                    failures.withLock { $0 += 1 }
                    continue
                }
                if bytes.count != entry.attributes.size { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
    }

    @Test("a store change refreshes cached keys at once and invalidates only the names whose value changed")
    func pushInvalidation() throws {
        let core = try core()
        let notifier = RecordingNotifier()
        core.setNotifier(notifier)
        let env = try envInode(core)
        store.set("production", "OTHER", .string("same"))
        _ = try core.lookup(parent: env, name: "CACHED")
        _ = try core.lookup(parent: env, name: "OTHER")
        store.set("production", "CACHED", .string("v2"))
        core.storeChanged("fake")
        let invalidated = notifier.invalidated.withLock { $0 }
        #expect(invalidated.count == 1)
        #expect(invalidated.first?.0 == env && invalidated.first?.1 == "CACHED")
        let after = try core.lookup(parent: env, name: "CACHED")
        #expect(try core.contents(after.attributes.inode).copyBytes() == Array("v2".utf8))
    }

    @Test("a change announces the changed names, in the tree and in a CSI view that shows them, and a directory whose listing changed; never an unchanged name, a fresh one or a value")
    func announcesChangedNames() throws {
        let core = try core()
        let notifier = RecordingNotifier()
        core.setNotifier(notifier)
        let env = try envInode(core)
        store.set("production", "OTHER", .string("same"))
        store.set("production", "FRESH_A", .string("f1"))
        core.storeChanged("fake")
        notifier.announced.withLock { $0 = [] }
        _ = try core.lookup(parent: env, name: "CACHED")
        let pod = PodIdentity(uid: "0b7c6f0e-1111-2222-3333-444455556666", name: "web", namespace: "ns", serviceAccount: "sa")
        _ = try core.publish(
            CSIVolume(id: "vol-1", top: "fake", env: "production", keys: ["CACHED"], pod: pod, group: nil, targetPath: "/t"))
        store.set("production", "CACHED", .string("v2"))
        store.set("production", "FRESH_A", .string("f2"))
        core.storeChanged("fake")
        #expect(notifier.announced.withLock { $0 } == [["fake/production/CACHED", ".csi/vol-1/CACHED"].sorted()])
        notifier.announced.withLock { $0 = [] }
        store.set("production", "ADDED", .string("a"))
        core.storeChanged("fake")
        #expect(notifier.announced.withLock { $0 } == [["fake/production", "fake/production/ADDED"]])
        let all = notifier.announced.withLock { $0 }.joined().joined()
        for value in ["v2", "f2", "same"] { #expect(!all.contains(value)) }
    }
}
