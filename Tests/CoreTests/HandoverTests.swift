import Dispatch
import Foundation
import Glibc
import Handover
import Logging
import SecretsCore
import Locking
import Testing

/// Records what a worker's core reports, as the supervisor would.
final class RecordingJournal: NodeJournal {
    let table = Locked(NodeTable())
    let messages = Locked<[HandoverMessage]>([])
    func report(_ events: [NodeEvent]) {
        for event in events {
            switch event {
            case .issued(let record): messages.withLock { $0.append(.node(record)) }
            case .forgotten(let inode): messages.withLock { $0.append(.removed(inode)) }
            }
            table.withLock { $0.apply(event) }
        }
    }
}

/// A stand-in keyed digest for unit tests (the worker uses HMAC-SHA256): the bytes reversed plus a key byte.
let testDigest: @Sendable (SecretBytes) -> [UInt8] = { bytes in [0x5a] + bytes.copyBytes().reversed() }

@Suite("worker handover")
struct HandoverTests {
    let store = FakeStore(name: "fake", envs: ["production": ["CACHED": .string("v1"), "FRESH_X": .string("f1")]])
    let clock = FakeClock()

    func core() throws -> FileSystemCore {
        let config = try makeConfig(ttl: "60s", stale: "30s")
        let resolver = try Resolver(config: config, stores: ["fake": store])
        return FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"), clock: clock.function)
    }

    /// A first worker that has served the env directory and one file, and the table it reported.
    func firstWorker() throws -> (FileSystemCore, RecordingJournal, env: UInt64, file: UInt64) {
        let first = try core()
        let journal = RecordingJournal()
        first.adopt([], nextInode: 2, handoff: NodeHandoff(journal: journal, digest: testDigest))
        let top = try first.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        let env = try first.lookup(parent: top, name: "production").attributes.inode
        let file = try first.lookup(parent: env, name: "CACHED").attributes.inode
        return (first, journal, env, file)
    }

    @Test("messages and tables survive encoding; truncated or padded input is an error, never a crash")
    func codec() throws {
        let hello = HandoverMessage.hello(
            .init(
                digestKey: [1, 2, 3], initRequest: Array(repeating: 7, count: 104), configPath: "/etc/c.toml",
                configText: "[mount]\npath = \"/ü\"\n", reload: true, noOpen: false,
                mountPath: "/secrets"))
        let file = NodeRecord.file(
            FileRecord(
                inode: 9, parent: 3, top: "local", env: "production", key: "A B/ü", size: 4, modifiedSeconds: -5,
                modifiedNanoseconds: 999_999_999, digest: [9, 9]))
        let messages: [HandoverMessage] = [
            hello, .ready, .node(.directory(inode: 2, top: "local", env: nil)),
            .node(.directory(inode: 3, top: "local", env: "production")), .node(file), .removed(9),
            .go(nextInode: 10), .serving,
        ]
        for message in messages {
            let bytes = message.encoded()
            #expect(try HandoverMessage.decode(bytes) == message)
            for cut in 0..<bytes.count {
                #expect(throws: SecretsError.self) { try HandoverMessage.decode(Array(bytes[0..<cut])) }
            }
            #expect(throws: SecretsError.self) { try HandoverMessage.decode(bytes + [0]) }
        }
        var table = NodeTable()
        for message in messages { table.apply(message) }
        table.apply(.node(file))
        #expect(table.highestInode == 9)
        #expect(try NodeTable.decode(table.encoded()) == table)
        #expect(table.records.map(\.inode) == [2, 3, 9])
        table.apply(.removed(9))
        table.apply(.removed(3))  // directories stay: a bind mount may hold one
        #expect(table.records.map(\.inode) == [2, 3])
        #expect(table.highestInode == 9, "ids are never reused on one connection")
    }

    @Test("a worker reports every id it issues before replying, and every file node the kernel forgets")
    func journal() throws {
        let (first, journal, env, file) = try firstWorker()
        let table = journal.table.withLock { $0 }
        #expect(table.records.map(\.inode) == [2, env, file])
        guard case .file(let record)? = table.nodes[file] else {
            Issue.record("no file record")
            return
        }
        #expect(record.top == "fake" && record.env == "production" && record.key == "CACHED" && record.size == 2)
        #expect(record.digest == testDigest(SecretBytes(string: "v1")), "the record carries a digest, not the value")
        first.forget(file, count: 1)
        #expect(journal.table.withLock { $0.nodes[file] } == nil)
    }

    @Test("a new worker keeps directory ids, serves old file ids whose value is unchanged, never reuses them")
    func takeover() throws {
        let (_, journal, env, file) = try firstWorker()
        let table = journal.table.withLock { $0 }
        let second = try core()
        let secondJournal = RecordingJournal()
        second.adopt(table.records, nextInode: table.highestInode + 1, handoff: NodeHandoff(journal: secondJournal, digest: testDigest))
        // The kernel asks about the ids it knows: a bind mount's directory, a file's attributes and pages.
        #expect(second.isDirectory(env))
        #expect(try second.attributes(file).0.size == 2)
        #expect(try second.contents(file).copyBytes() == Array("v1".utf8))
        let top = try second.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        #expect(try second.lookup(parent: top, name: "production").attributes.inode == env)
        // A new lookup of the same name gets a new id above every old one: the old id's count is unknown here.
        let again = try second.lookup(parent: env, name: "CACHED").attributes.inode
        #expect(again > table.highestInode)
        // The kernel's forget of the old id, whatever its count, releases it.
        second.forget(file, count: 3)
        #expect(!second.isFile(file))
        #expect(second.isFile(again))
        #expect(secondJournal.messages.withLock { $0 }.contains(.removed(file)))
    }

    @Test("one open, one value: an old id whose value changed meanwhile fails with ESTALE, never reads the new one")
    func staleAfterChange() throws {
        let (_, journal, _, file) = try firstWorker()
        let table = journal.table.withLock { $0 }
        store.set("production", "CACHED", .string("v2"))
        let second = try core()
        second.adopt(table.records, nextInode: table.highestInode + 1, handoff: NodeHandoff(journal: RecordingJournal(), digest: testDigest))
        #expect(throws: SecretsError.self) { try second.contents(file) }
        do {
            _ = try second.contents(file)
        } catch {
            #expect(error.code == .stale && error.errno == ESTALE)
            #expect(!error.description.contains("v2") && !error.description.contains("v1"))
        }
    }

    @Test("a change notice after a takeover invalidates the old name when its value changed")
    func invalidationOfInherited() throws {
        let (_, journal, _, _) = try firstWorker()
        let table = journal.table.withLock { $0 }
        let second = try core()
        second.adopt(table.records, nextInode: table.highestInode + 1, handoff: NodeHandoff(journal: RecordingJournal(), digest: testDigest))
        let notifier = RecordingNotifier()
        second.setNotifier(notifier)
        // The new worker has not read the key itself: the name the kernel holds is still watched.
        store.set("production", "CACHED", .string("v3"))
        second.storeChanged("fake")
        #expect(notifier.invalidated.withLock { $0.map(\.1) } == ["CACHED"])
    }
}

@Suite("entry names")
struct EntryNameTests {
    @Test("one rule: not empty, not . or .., no / or NUL, at most 255 bytes; problems never quote the name")
    func rule() {
        #expect(EntryName.problem("PASSWORD") == nil)
        #expect(EntryName.problem("päss wörd ✓") == nil)
        #expect(EntryName.problem(String(repeating: "a", count: 255)) == nil)
        #expect(EntryName.problem("") == "an empty name")
        #expect(EntryName.problem(".") != nil && EntryName.problem("..") != nil && EntryName.problem("...") == nil)
        #expect(EntryName.problem("secret/name") == "a name of 11 bytes with '/' at byte 7")
        #expect(EntryName.problem("ab\u{0}c") == "a name of 4 bytes with NUL at byte 3")
        #expect(EntryName.problem(String(repeating: "ü", count: 128)) == "a name of 256 bytes (at most 255)")
    }

    @Test("a listing leaves bad names out with one warning per store and env; lookups of them are ENOENT")
    func listing() throws {
        let store = FakeStore(
            name: "fake", envs: ["production": ["a/b": .string("x"), "": .string("y"), "OK": .string("z")],
                                 "bad/env": ["K": .string("k")]])
        let config = try makeConfig()
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let core = FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"))
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        #expect(try core.list(top).map(\.name) == ["default", "global", "production"])
        let env = try core.lookup(parent: top, name: "production").attributes.inode
        #expect(try core.list(env).map(\.name) == ["OK"])
        #expect(try core.list(env).map(\.name) == ["OK"])
        #expect(throws: SecretsError.self) { try core.lookup(parent: env, name: "") }
        #expect(throws: SecretsError.self) { try core.lookup(parent: top, name: "bad/env") }
    }
}

@Suite("cached env views and change notices")
struct EnvViewTests {
    let store = FakeStore(
        name: "fake",
        envs: ["production": ["A": .string("a1")], "staging": ["S": .string("s1")], "default": ["D": .string("d1")]])
    let clock = FakeClock()

    func core() throws -> (FileSystemCore, env: UInt64, staging: UInt64) {
        let config = try makeConfig(ttl: "60s")
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let core = FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"), clock: clock.function)
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "fake").attributes.inode
        let env = try core.lookup(parent: top, name: "production").attributes.inode
        let staging = try core.lookup(parent: top, name: "staging").attributes.inode
        return (core, env, staging)
    }

    @Test("a cached env's listing and values come from one fetch and expire together")
    func consistent() throws {
        let (core, env, _) = try core()
        #expect(try core.list(env).map(\.name) == ["A", "D"])
        let first = try core.lookup(parent: env, name: "A").attributes.inode
        store.set("production", "A", .string("a2"))
        store.set("production", "B", .string("b1"))
        clock.advance(30)
        // Within the ttl: the old listing with the old values, never the new names beside old values.
        #expect(try core.list(env).map(\.name) == ["A", "D"])
        #expect(try core.contents(try core.lookup(parent: env, name: "A").attributes.inode).copyBytes() == Array("a1".utf8))
        #expect(throws: SecretsError.self) { try core.lookup(parent: env, name: "B") }
        clock.advance(31)
        #expect(try core.list(env).map(\.name) == ["A", "B", "D"])
        let after = try core.lookup(parent: env, name: "A").attributes.inode
        #expect(after != first)
        #expect(try core.contents(after).copyBytes() == Array("a2".utf8))
    }

    @Test("a notice refetches only the envs it affects; default, dynaconf and global reach every env")
    func onlyAffected() throws {
        let (core, env, staging) = try core()
        _ = try core.lookup(parent: env, name: "A")
        _ = try core.lookup(parent: staging, name: "S")
        let notifier = RecordingNotifier()
        core.setNotifier(notifier)
        var calls = store.calls.withLock { $0 }
        // Another location of the store, or another store: nothing to do.
        core.storeChanged("fake", [.at(location: "elsewhere", env: nil)])
        core.storeChanged("other", [.all])
        #expect(store.calls.withLock { $0 } == calls)
        // staging changed: only staging is fetched again (4 layers: global, staging, dynaconf, default).
        store.set("staging", "S", .string("s2"))
        core.storeChanged("fake", [.at(location: nil, env: "staging"), .at(location: nil, env: "staging")])
        #expect(store.calls.withLock { $0 } - calls == 4)
        #expect(notifier.invalidated.withLock { $0.map(\.1) } == ["S"])
        // default changed: both envs are fetched again; only names whose value changed are invalidated.
        calls = store.calls.withLock { $0 }
        store.set("default", "D", .string("d2"))
        core.storeChanged("fake", [.at(location: nil, env: "default")])
        #expect(store.calls.withLock { $0 } - calls == 8)
        #expect(notifier.invalidated.withLock { $0.map(\.1) } == ["S"])
        _ = try core.lookup(parent: env, name: "D")
        store.set("default", "D", .string("d3"))
        core.storeChanged("fake", [.at(location: nil, env: "default")])
        #expect(notifier.invalidated.withLock { $0.map(\.1) } == ["S", "D"])
    }
}

@Suite("environment in config paths")
struct ConfigEnvironmentTests {
    @Test("${VAR} in path values comes from the environment; an unset one is an error with its location")
    func expansion() throws {
        setenv("SECRETSFS_TEST_CREDENTIALS", "/run/credentials/secretsfs.service", 1)
        let text = """
            [stores.local]
            type = "file"
            files = ["${SECRETSFS_TEST_CREDENTIALS}/secrets.toml.age"]
            identity = "${SECRETSFS_TEST_CREDENTIALS}/identity"
            """
        let config = try Config.parse(text: text, file: "/etc/secretsfs/config.toml")
        let section = try #require(config.store(named: "local")?.section)
        #expect(try section.path("identity") == "/run/credentials/secretsfs.service/identity")
        unsetenv("SECRETSFS_TEST_UNSET")
        do {
            _ = try Config.parse(text: "[mount]\npath = \"${SECRETSFS_TEST_UNSET}/mnt\"\n[stores.a]\ntype = \"file\"\n", file: "c.toml")
            Issue.record("an unset variable was accepted")
        } catch {
            #expect(error.location.line == 2)
            #expect(error.description.contains("${SECRETSFS_TEST_UNSET}"))
        }
    }
}

@Suite("secret memory")
struct SecretMemoryTests {
    /// The VmFlags of the mapping that holds `address`, from /proc/self/smaps.
    static func flags(of address: UInt) throws -> [String] {
        let smaps = try FileIO.readText("/proc/self/smaps")
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if let range = fields.first, range.contains("-"), !line.hasPrefix("VmFlags") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
            } else if inside && line.hasPrefix("VmFlags:") {
                return fields.dropFirst().map(String.init)
            }
        }
        return []
    }

    @Test("values live in pages of their own: left out of core dumps (dd) and locked (lo), small and large")
    func pages() throws {
        for size in [5, 100, 70_000] {
            let value = SecretBytes(Array(repeating: UInt8(ascii: "s"), count: size))
            let address = value.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
            let flags = try Self.flags(of: address)
            #expect(flags.contains("dd"), "size \(size): \(flags)")
            // (A sanitizer build's mlock succeeds and locks nothing.)
            #expect(Sanitizers.runtimeLinked || flags.contains("lo"), "size \(size): \(flags) (tests run as root: mlock is allowed)")
            #expect(value.copyBytes().count == size)
        }
        #expect(Sanitizers.runtimeLinked || SecretBytes.arenaUsage.lockedPages > 0)
        // Freed blocks are reused and wiped.
        var addresses: Set<UInt> = []
        for round in 0..<100 {
            let value = SecretBytes(string: "value-\(round)")
            addresses.insert(value.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) })
        }
        #expect(addresses.count < 100)
    }
}

/// A store whose every read takes 20 ms and returns the current version, and counts reads.
final class SlowStore: SecretStore {
    let name = "slow"
    let version = Locked(0)
    let calls = Locked(0)
    func envs(at location: String?) throws(SecretsError) -> [String] { ["production"] }
    func fields(of env: String, at location: String?) throws(SecretsError) -> [String: SecretValue]? {
        env == "production" ? ["FRESH_V": .string("\(version.withLock { $0 })")] : nil
    }
    func value(of key: String, layers: [String], at location: String?) throws(SecretsError) -> SecretValue? {
        calls.withLock { $0 += 1 }
        let current = version.withLock { $0 }
        usleep(20_000)
        return .string("\(current)")
    }
}

@Suite("shared fresh fetches and fresh_max_age")
struct SharedFetchTests {
    func core(_ store: SlowStore, maxAge: String) throws -> (FileSystemCore, UInt64) {
        let config = try Config.parse(
            text: "[cache]\nfresh = [\"FRESH_*\"]\nfresh_max_age = \"\(maxAge)\"\n[stores.slow]\ntype = \"file\"\n", file: "c.toml")
        let resolver = try Resolver(config: config, stores: ["slow": store])
        let core = FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"))
        let top = try core.lookup(parent: FileSystemCore.rootInode, name: "slow").attributes.inode
        return (core, try core.lookup(parent: top, name: "production").attributes.inode)
    }

    /// `count` real threads at once (concurrentPerform would use only as many as there are cores).
    static func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let group = DispatchGroup()
        for index in 0..<count {
            group.enter()
            Thread {
                body(index)
                group.leave()
            }.start()
        }
        group.wait()
    }

    func read(_ core: FileSystemCore, _ env: UInt64) throws -> Int {
        let inode = try core.lookup(parent: env, name: "FRESH_V").attributes.inode
        return Int(try core.contents(inode).utf8String() ?? "") ?? -1
    }

    @Test("strict: concurrent opens share fetches, none returns a value older than its open; one reader, one fetch each")
    func strict() throws {
        let store = SlowStore()
        let (core, env) = try core(store, maxAge: "0")
        let stale = Locked(0)
        let reads = Locked(0)
        Self.onThreads(16) { index in
            for _ in 0..<10 {
                if index == 0 { store.version.withLock { $0 += 1 } }
                let before = store.version.withLock { $0 }
                let value = (try? read(core, env)) ?? -1
                reads.withLock { $0 += 1 }
                if value < before { stale.withLock { $0 += 1 } }
            }
        }
        #expect(stale.withLock { $0 } == 0, "a read returned a value written before its open was fetched")
        #expect(store.calls.withLock { $0 } < reads.withLock { $0 } / 2, "\(store.calls.withLock { $0 }) fetches for 160 reads")
        let before = store.calls.withLock { $0 }
        for _ in 0..<5 { _ = try read(core, env) }
        #expect(store.calls.withLock { $0 } - before == 5, "a sequential reader fetches on every open")
    }

    @Test("fresh_max_age bounds the backend calls per key, whatever the readers")
    func bounded() throws {
        let store = SlowStore()
        let (core, env) = try core(store, maxAge: "200ms")
        let end = Date().addingTimeInterval(1)
        Self.onThreads(8) { _ in
            while Date() < end { _ = try? read(core, env) }
        }
        // About one fetch per 200 ms (plus the first), not one per read.
        #expect(store.calls.withLock { $0 } <= 8, "\(store.calls.withLock { $0 }) fetches in 1 s")
    }
}
