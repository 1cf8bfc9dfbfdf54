import Glibc
import Logging
import SecretsCore
import Locking
import Testing
import TestSupport

/// The parts of the core, each on its own (FileSystemCore's tests cover them together).
@Suite("core parts")
struct CorePartsTests {
    let digest: (SecretBytes) -> [UInt8] = { [0x5a] + $0.copyBytes().reversed() }
    let path = InodeTable.FilePath(top: "local", env: "production", key: "K")

    @Test("inode table: a name keeps its node while its value holds, gets a new one when it changes; events say so")
    func inodeTable() {
        var table = InodeTable()
        var events: [NodeEvent] = []
        let top = table.directoryInode(.top("local"), events: &events)
        let env = table.directoryInode(.env(top: "local", env: "production"), events: &events)
        #expect(table.directoryInode(.top("local"), events: &events) == top, "one id per directory")
        #expect(events.count == 2 && table.parent(of: env) == top && table.parent(of: top) == InodeTable.rootInode)
        events = []
        let (first, node) = table.fileLookup(
            path, parent: env, bytes: SecretBytes(string: "v1"), now: (1, 2), digest: digest, events: &events)
        #expect(node.size == 2 && node.digest == digest(SecretBytes(string: "v1")))
        let (again, _) = table.fileLookup(
            path, parent: env, bytes: SecretBytes(string: "v1"), now: (3, 4), digest: digest, events: &events)
        #expect(again == first && events.count == 1, "the same value: the same node, no new event")
        let (changed, _) = table.fileLookup(
            path, parent: env, bytes: SecretBytes(string: "v2"), now: (5, 6), digest: digest, events: &events)
        #expect(changed > first && table.current[path] == changed && table.files[first] != nil)
        // Two lookups of the first node: one forget of count 1 keeps it, the second releases it.
        table.forget(first, count: 1, events: &events)
        #expect(table.files[first] != nil)
        table.forget(first, count: 1, events: &events)
        #expect(table.files[first] == nil && events.last == .forgotten(first))
        #expect(table.current[path] == changed, "forgetting an old node leaves the name's current one")
        table.detach(path)
        #expect(table.current[path] == nil && table.files[changed] != nil, "a detached name keeps its node for handles")
    }

    @Test("inode table: adopted nodes are confirmed by digest, released by their first forget, ids never reused")
    func adoption() {
        var table = InodeTable()
        table.adopt(
            [
                .directory(inode: 7, top: "local", env: "production"),
                .file(
                    FileRecord(
                        inode: 9, parent: 7, top: "local", env: "production", key: "K", size: 2, modifiedSeconds: 1,
                        modifiedNanoseconds: 0, digest: digest(SecretBytes(string: "v1")))),
            ], nextInode: 10)
        let directory = table.existingDirectory(.env(top: "local", env: "production"))
        let adopted = table.files[9]
        #expect(directory == 7)
        #expect(adopted?.bytes == nil && adopted?.inherited == true)
        let otherValue = table.confirm(9, bytes: SecretBytes(string: "v2"), digest: digest)
        let sameValue = table.confirm(9, bytes: SecretBytes(string: "v1"), digest: digest)
        #expect(!otherValue, "another value is not confirmed")
        #expect(sameValue)
        var events: [NodeEvent] = []
        let (fresh, _) = table.fileLookup(
            path, parent: 7, bytes: SecretBytes(string: "v1"), now: (1, 0), digest: digest, events: &events)
        #expect(fresh == 10, "an inherited node is never handed out again")
        table.forget(9, count: 5, events: &events)
        #expect(table.files[9] == nil && events.last == .forgotten(9))
    }

    @Test("directory handles: one listing per handle, a handle of an earlier worker listed once and kept")
    func directoryHandles() throws {
        let handles = DirectoryHandles(first: 100)
        let one = handles.open([DirectoryEntry(name: "a", inode: 2, isDirectory: false)])
        #expect(one == 100 && handles.open([]) == 101)
        let lists = Locked(0)
        let list: () throws(SecretsError) -> [DirectoryEntry] = {
            lists.withLock { $0 += 1 }
            return [DirectoryEntry(name: "b", inode: 3, isDirectory: false)]
        }
        #expect(try handles.entries(one, list: list).map(\.name) == ["a"])
        #expect(try handles.entries(7, list: list).map(\.name) == ["b"])
        #expect(try handles.entries(7, list: list).map(\.name) == ["b"])
        #expect(lists.withLock { $0 } == 1)
        handles.release(one)
        handles.release(7)
        #expect(handles.count == 1)
    }

    @Test("env view cache: fresh within ttl, refetched after, stale only within stale_if_error and never for not found")
    func envViewCache() throws {
        let store = FakeStore(name: "fake", envs: ["production": ["A": .string("a1")]])
        let config = try makeConfig()
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let health = StoreHealthBoard(clock: { 0 }, logger: Logger(label: "test"))
        let cache = EnvViewCache(resolver: resolver, health: health, ttl: 10, staleIfError: 5)
        let key = EnvKey(top: "fake", env: "production")
        let first = try cache.view(key, now: 100)
        #expect(first.view.value(of: "A") == .string("a1") && first.remaining == 10 && !first.stale)
        store.set("production", "A", .string("a2"))
        #expect(try cache.view(key, now: 104).view.value(of: "A") == .string("a1"), "within ttl: the cached view")
        #expect(try cache.view(key, now: 104).remaining == 6)
        #expect(try cache.view(key, now: 111).view.value(of: "A") == .string("a2"), "after ttl: fetched again")
        store.failing.withLock { $0 = true }
        let stale = try cache.view(key, now: 124)
        #expect(stale.stale && stale.view.value(of: "A") == .string("a2") && stale.remaining == 1)
        #expect(throws: SecretsError.self) { try cache.view(key, now: 127) }
        #expect(health.snapshot["fake"]?.ok == false)
    }

    @Test("env view cache: once its store failed, a stale view is served without waiting on the store; one background refresh brings the store's answer back")
    func staleWhileFailing() throws {
        let store = FakeStore(name: "fake", envs: ["production": ["A": .string("a1")]])
        let resolver = try Resolver(config: try makeConfig(), stores: ["fake": store])
        let clock = FakeClock()
        clock.advance(100)
        let health = StoreHealthBoard(clock: clock.function, logger: Logger(label: "test"))
        let cache = EnvViewCache(resolver: resolver, health: health, ttl: 10, staleIfError: 60)
        let key = EnvKey(top: "fake", env: "production")
        _ = try cache.view(key, now: clock.function())
        store.failing.withLock { $0 = true }
        clock.advance(11)
        let callsBefore = store.calls.withLock { $0 }
        #expect(try cache.view(key, now: clock.function()).stale, "the first read after the ttl asks, fails, serves stale")
        #expect(store.calls.withLock { $0 } > callsBefore, "that read asked the store")
        #expect(health.isFailing("fake"))
        // The store answers again, with a new value; the next read is still served at once from the cache and
        // starts a refresh, whose answer the read after it gets.
        store.failing.withLock { $0 = false }
        store.set("production", "A", .string("a2"))
        let served = try cache.view(key, now: clock.function())
        #expect(served.stale && served.view.value(of: "A") == .string("a1") && served.remaining == 1)
        try waitUntil("the background refresh ends", seconds: 10) { health.refreshesRunning == 0 }
        #expect(!health.isFailing("fake"))
        let after = try cache.view(key, now: clock.function())
        #expect(!after.stale && after.view.value(of: "A") == .string("a2"))
    }

    @Test("access gate: a caller outside an allow list gets EACCES before any read; outcomes are what the body says")
    func accessGate() throws {
        let config = try makeConfig(
            """

            [[access]]
            path = "fake/production/SECRET"
            allow = ["uid:1001"]
            """)
        let gate = AccessGate(
            policy: AccessPolicy(config: config), audit: nil,
            callerDetails: { _ in CallerDetails(exe: nil, cgroup: nil, groups: []) })
        let secret = InodeTable.FilePath(top: "fake", env: "production", key: "SECRET")
        let reads = Locked(0)
        let body: () throws(SecretsError) -> (Int, String) = {
            reads.withLock { $0 += 1 }
            return (42, "cached")
        }
        do {
            _ = try gate.read(secret, caller: Caller(uid: 1002, gid: 1002, pid: 1), via: "test", body)
            Issue.record("uid 1002 was let through")
        } catch {
            #expect(error.errno == EACCES && error.code == .permissionDenied)
        }
        #expect(reads.withLock { $0 } == 0, "a denied caller causes no backend read")
        #expect(try gate.read(secret, caller: Caller(uid: 1001, gid: 1001, pid: 1), via: "test", body) == 42)
        #expect(try gate.read(secret, caller: nil, via: "api", body) == 42, "no caller: no allow rule applies")
        let missing: () throws(SecretsError) -> (Int, String) = { () throws(SecretsError) in
            throw SecretsError(.notFound, "no such key")
        }
        #expect(throws: SecretsError.self) { try gate.read(self.path, caller: nil, via: "api", missing) }
    }
}

@Suite("directory layout")
struct DirectoryLayoutTests {
    func parse(_ stores: String, events: Bool = true) throws(LocatedError) -> Config {
        try Config.parse(
            text: "[mount]\npath = \"/tmp/x\"\ndirectory_events = \(events)\n" + stores, file: "layout.toml")
    }

    @Test("layout = \"kubernetes\" on any store or scope; a file store's own layout values stay its files'; directory_layout beside them; a wrong value or a missing directory_events names the key")
    func parsing() throws {
        let redis = try parse("[stores.r]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nlayout = \"kubernetes\"\n")
        #expect(redis.stores.first?.layout == .kubernetes)
        let file = try parse("[stores.f]\ntype = \"file\"\nfiles = [\"a.toml\"]\nlayout = \"envs\"\ndirectory_layout = \"kubernetes\"\n")
        #expect(file.stores.first?.layout == .kubernetes)
        let plainFile = try parse("[stores.f]\ntype = \"file\"\nfiles = [\"a.toml\"]\nlayout = \"envs\"\n")
        #expect(plainFile.stores.first?.layout == .plain)
        let scope = try parse("""
            [stores.r]
            type = "redis"
            url = "redis://127.0.0.1:1"
            [scopes.s]
            chain = ["r"]
            layout = "kubernetes"
            """)
        #expect(scope.scopes.first?.layout == .kubernetes)
        #expect { _ = try parse("[stores.r]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nlayout = \"tree\"\n") } throws: { error in
            "\(error)".contains("layout.toml:7:") && "\(error)".contains("\"plain\" or \"kubernetes\"")
        }
        #expect { _ = try parse("[stores.r]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nlayout = \"kubernetes\"\n", events: false) } throws: { error in
            "\(error)".contains("layout.toml:7:") && "\(error)".contains("needs directory_events = true")
        }
    }
}
