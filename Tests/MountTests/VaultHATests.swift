import Foundation
import Testing
import TestSupport

/// A real three-node OpenBao cluster (integrated Raft) behind `addresses`: readers through a real mount while the
/// active node goes away, and a sealed node or a standby first in the list.
@Suite("Vault HA cluster", .serialized)
struct VaultHATests {
    func config(_ fixture: Fixture, cluster: BaoCluster, addresses: [BaoCluster.Node]) throws -> String {
        let token = try fixture.dir.write("vault-token", cluster.rootToken + "\n")
        let list = addresses.map { "\"\($0.address)\"" }.joined(separator: ", ")
        return try fixture.dir.write(
            "vault.toml",
            """
            [mount]
            path = "\(fixture.mountpoint)"
            [cache]
            ttl = "5m"
            stale_if_error = "10m"
            [stores.vault]
            type = "vault"
            addresses = [\(list)]
            token_file = "\(token)"
            fresh = ["DB_*"]
            timeout = "2s"
            """)
    }

    @Test(
        "the active node stops (SIGTERM, then SIGKILL): cached reads never fail, fresh reads fail only during the election, the next rotation is read from the new leader",
        arguments: [SIGTERM, SIGKILL])
    func leaderLoss(signal: Int32) throws {
        let cluster = try BaoCluster()
        defer { cluster.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let leader = try #require(cluster.active())
        try cluster.cli(leader, ["kv", "put", "secret/dynaconf/production", "DB_PASS=ha-1", "NAME=cached-1"])
        // The leader first in the list: requests go there until it is gone.
        let order = [leader] + cluster.nodes.filter { $0 !== leader }
        let fs = try fixture.mount(config: try config(fixture, cluster: cluster, addresses: order))
        #expect(try fs.readText("vault/production/DB_PASS") == "ha-1")
        #expect(try fs.readText("vault/production/NAME") == "cached-1")
        let reader = LoopReader(fs, paths: ["vault/production/DB_PASS", "vault/production/NAME"])
        try reader.waitForReads(10)
        let stopped = Date()
        leader.stop(signal)
        let newLeader = try cluster.waitForNewLeader(after: leader)
        let elected = Date()
        try cluster.cli(newLeader, ["kv", "put", "secret/dynaconf/production", "DB_PASS=ha-2", "NAME=cached-1"])
        let seen = reader.waitFor("vault/production/DB_PASS", text: "ha-2", since: elected, seconds: 20)
        try reader.waitForReads(10)  // reads of both keys after the new leader serves
        let outcomes = reader.stop()
        #expect(seen != nil, "the rotation written to the new leader is read")
        let cached = outcomes.filter { $0.path.hasSuffix("NAME") }
        #expect(cached.count > 10 && cached.allSatisfy { $0.text == "cached-1" }, "cached: \(cached.filter { $0.text == nil }.count) errors")
        let fresh = outcomes.filter { $0.path.hasSuffix("DB_PASS") }
        let failed = fresh.filter { $0.text == nil }
        // Failures only between the stop and a few seconds after the new leader answered as active.
        #expect(failed.allSatisfy { $0.at >= stopped && $0.at <= elected.addingTimeInterval(5) }, "\(failed.count) failed fresh reads, some outside the election window")
        #expect(failed.allSatisfy { $0.errno == EIO }, "a failing fresh read is EIO")
        #expect(fresh.contains { $0.at > stopped && $0.text == "ha-1" || $0.text == "ha-2" })
        let window = Date().timeIntervalSince(stopped)
        print("leader \(leader.name) stopped by signal \(signal): new leader after \(String(format: "%.1f", elected.timeIntervalSince(stopped))) s, \(failed.count) of \(fresh.count) fresh reads failed, \(cached.count) cached reads, 0 failed (window \(String(format: "%.1f", window)) s)")
        let switches = fs.log.components(separatedBy: "Vault requests moved to another node").count - 1
        #expect(switches >= 1 && switches <= 4, "a switch or two is logged, no flapping back to the dead node: \(switches)")
        #expect(!fs.log.contains(cluster.rootToken) && !fs.log.contains("ha-1") && !fs.log.contains("cached-1"))
    }

    @Test("a sealed node and a standby first in the list are passed over for reads and for `secretsfs write`")
    func sealedAndStandbyFirst() throws {
        let cluster = try BaoCluster()
        defer { cluster.remove() }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let leader = try #require(cluster.active())
        let standbys = cluster.nodes.filter { $0 !== leader }
        try cluster.cli(leader, ["kv", "put", "secret/dynaconf/production", "DB_PASS=first", "NAME=n"])
        try cluster.seal(standbys[0])
        #expect(standbys[0].health() == 503, "sealed")
        let config = try config(fixture, cluster: cluster, addresses: [standbys[0], standbys[1], leader])
        let fs = try fixture.mount(config: config)
        #expect(try fs.readText("vault/production/DB_PASS") == "first")
        #expect(try fs.readText("vault/production/NAME") == "n")
        let set = try fixture.cli(["write", "--config", config, "vault", "-e", "production", "DB_PASS=second"])
        #expect(set.status == 0, "write: \(set.stderr)")
        let stored = try cluster.cli(leader, ["kv", "get", "-field=DB_PASS", "secret/dynaconf/production"])
        #expect(stored.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "second", "the write reached the cluster")
        #expect(try fs.readText("vault/production/DB_PASS") == "second")
        #expect(fs.log.contains("Vault requests moved to another node") && fs.log.contains("503") && fs.log.contains("is active"))
        #expect(!set.stderr.contains("second") && !fs.log.contains("second"))
    }
}
