import Glibc
import Handover
import SecretsCore
import Supervision
import Testing

/// The bytes a release before versions (64aab13) wrote, built field by field as it did, to check that this build
/// still reads them.
func legacyState(pid: Int64, channel: Int64, table: NodeTable) -> [UInt8] {
    var writer = HandoverWriter()
    writer.u64(7)  // the connection's descriptor
    writer.string("/secrets")
    writer.bytes([26, 0, 0, 0])
    writer.bytes([0xaa, 0xbb])
    writer.string("/etc/secretsfs/config.toml")
    writer.string("[mount]\n")
    writer.byte(0)  // no_open
    writer.string("debug")
    writer.byte(1)  // ever served
    writer.u64(UInt64(bitPattern: pid))
    writer.u64(UInt64(bitPattern: channel))
    writer.byte(1)  // serving
    writer.u64(3)  // restarts
    writer.bytes(table.encoded())
    return writer.output
}

@Suite("handover protocol versions")
struct HandoverProtocolTests {
    func table() -> NodeTable {
        var table = NodeTable()
        table.apply(.issued(.directory(inode: 2, top: "local", env: nil)))
        table.apply(
            .issued(
                .file(
                    FileRecord(
                        inode: 5, parent: 2, top: "local", env: "production", key: "K", size: 3, modifiedSeconds: 1,
                        modifiedNanoseconds: 2, digest: [1]))))
        return table
    }

    @Test("negotiation picks the newest version both speak, or none")
    func negotiation() {
        #expect(HandoverProtocol.negotiate(0...1, 0...0) == 0)
        #expect(HandoverProtocol.negotiate(0...1, 0...3) == 1)
        #expect(HandoverProtocol.negotiate(0...1, 1...1) == 1)
        #expect(HandoverProtocol.negotiate(2...3, 0...1) == nil)
        #expect(HandoverProtocol.negotiate(0...1, 2...4) == nil)
        #expect(HandoverProtocol.parseAnnouncement(HandoverProtocol.announcement) == HandoverProtocol.supported)
        #expect(HandoverProtocol.parseAnnouncement("Error: Unexpected argument 'handover-protocol'\n") == nil)
        #expect(HandoverProtocol.parseAnnouncement("secretsfs-handover 3 1") == nil)
    }

    @Test("the re-exec state round-trips in every version; versions 1 to 3 start with their magic and version")
    func stateRoundTrip() throws {
        let worker = SupervisorState.RunningWorker(pid: 4242, channelFD: 9, serving: true, protocolVersion: 2, inflightFD: 11)
        let state = SupervisorState(
            fuseFD: 10, mountPath: "/secrets", initRequest: [26, 0, 0, 0], digestKey: [1, 2], configPath: "/c.toml",
            configText: "[mount]\n", noOpen: true, logLevel: "info", everServed: true, worker: worker, restarts: 2,
            table: table())
        let current = state.encoded()
        #expect(Array(current[0..<6]) == Array("SFSR".utf8) + [3, 0])
        let (decoded, version) = try SupervisorState.decode(current)
        #expect(decoded == state && version == 3)
        // Version 3 adds node records (CSI volumes) and fusermount3's sockets at the end: the rest is version 2's.
        var withSockets = state
        withSockets.unmountSockets = [21, 22]
        let three = withSockets.encoded()
        #expect(try SupervisorState.decode(three) == (withSockets, 3))
        let two = withSockets.encoded(version: 2)
        #expect(Array(two[0..<6]) == Array("SFSR".utf8) + [2, 0] && Array(two[6...]) == Array(current[6..<(current.count - 8)]))
        #expect(try SupervisorState.decode(two) == (state, 2))
        // Version 1 cannot carry the in-flight page: the worker it resumes then has none.
        var withoutPage = state
        withoutPage.worker?.inflightFD = -1
        let one = state.encoded(version: 1)
        #expect(Array(one[0..<6]) == Array("SFSR".utf8) + [1, 0])
        let (decodedOne, versionOne) = try SupervisorState.decode(one)
        #expect(decodedOne == withoutPage && versionOne == 1)
        // Version 0 cannot carry the worker's protocol: its workers spoke 0.
        var expected = withoutPage
        expected.worker?.protocolVersion = 0
        let (old, oldVersion) = try SupervisorState.decode(state.encoded(version: 0))
        #expect(old == expected && oldVersion == 0)
        // Every truncation or padding is an error, never a crash.
        for cut in stride(from: 0, to: current.count, by: 7) {
            #expect(throws: SecretsError.self) { try SupervisorState.decode(Array(current[0..<cut])) }
        }
        #expect(throws: SecretsError.self) { try SupervisorState.decode(current + [0]) }
    }

    @Test("the state a release before versions wrote reads back, worker and table included")
    func legacyStateReads() throws {
        let (state, version) = try SupervisorState.decode(legacyState(pid: 77, channel: 12, table: table()))
        #expect(version == 0)
        #expect(state.fuseFD == 7 && state.mountPath == "/secrets" && state.logLevel == "debug" && state.everServed)
        #expect(state.worker == .init(pid: 77, channelFD: 12, serving: true, protocolVersion: 0))
        #expect(state.restarts == 3 && state.table == table())
        // The same bytes this build writes for a version-0 binary.
        #expect(state.encoded(version: 0) == legacyState(pid: 77, channel: 12, table: table()))
        let (none, _) = try SupervisorState.decode(legacyState(pid: 0, channel: -1, table: NodeTable()))
        #expect(none.worker == nil)
    }

    @Test("a state of a version this binary does not know is refused by name")
    func futureState() {
        var writer = HandoverWriter()
        writer.raw(Array("SFSR".utf8))
        writer.u16(9)
        writer.u64(1)
        do {
            _ = try SupervisorState.decode(writer.output)
            Issue.record("a version-9 state was accepted")
        } catch {
            #expect(error.code == .unsupported && error.message.contains("version 9"))
        }
    }

    func pair(_ version: UInt16) throws -> (ControlChannel, Int32) {
        let (supervisor, worker) = try ControlChannel.pair(version: version)
        return (supervisor, worker.fd)
    }

    @Test("a worker answers in the version the supervisor announces: 1 with preambles, 0 without")
    func handshake() throws {
        for version: UInt16 in [0, 1] {
            let (supervisor, workerFD) = try pair(version)
            defer {
                supervisor.close()
                close(workerFD)
            }
            let hello = HandoverMessage.Hello(
                digestKey: [1], initRequest: [2], configPath: "/c", configText: "t", reload: true, noOpen: false,
                mountPath: "/m", restarts: 4)
            supervisor.open()
            supervisor.send(.hello(hello))
            let (channel, received) = try WorkerHandshake.accept(fd: workerFD)
            #expect(received == hello && channel.version == version)
            channel.send(.ready)
            guard case .message(.ready) = supervisor.receive(wait: false) else {
                Issue.record("no ready in version \(version)")
                continue
            }
            supervisor.send(.node(.directory(inode: 2, top: "t", env: nil)))
            supervisor.send(.go(nextInode: 3))
            let table = WorkerHandshake.receiveTable(channel)
            #expect(table?.records.map(\.inode) == [2] && table?.nextInode == 3)
        }
    }

    @Test("a version-0 supervisor sends no preamble, and a version-1 one is never read as version 0")
    func preambles() throws {
        let (zero, zeroWorker) = try pair(0)
        zero.open()
        zero.send(.ready)
        var probe = [UInt8](repeating: 0, count: 64)
        let count = recv(zeroWorker, &probe, probe.count, Int32(MSG_DONTWAIT))
        #expect(count == 1 && probe[0] == 2, "version 0: the first packet is the message itself")
        zero.close()
        close(zeroWorker)
        // A supervisor that announces a version the worker does not speak: refused with both versions named.
        let (future, futureWorker) = try pair(0)
        defer {
            future.close()
            close(futureWorker)
        }
        _ = Array("SFSH".utf8 + [9, 0]).withUnsafeBytes { send(future.fd, $0.baseAddress, $0.count, 0) }
        do {
            _ = try WorkerHandshake.accept(fd: futureWorker)
            Issue.record("a version-9 supervisor was accepted")
        } catch {
            #expect(error.code == .unsupported && error.message.contains("9") && error.message.contains("0 to 3"))
        }
    }

    @Test("a channel refuses a peer that announces another version")
    func mismatch() throws {
        let (one, other) = try ControlChannel.pair(version: 1)
        defer {
            one.close()
            other.close()
        }
        _ = Array("SFSH".utf8 + [2, 0]).withUnsafeBytes { send(other.fd, $0.baseAddress, $0.count, 0) }
        guard case .invalid(let error) = one.receive(wait: false) else {
            Issue.record("a version-2 preamble was accepted by a version-1 channel")
            return
        }
        #expect(error.message.contains("2") && error.message.contains("1"))
    }
}

@Suite("restart policy")
struct RestartPolicyTests {
    @Test("a worker that served is replaced at once however short its life; deaths before serving back off to 1 s")
    func pauses() {
        var policy = RestartPolicy()
        for _ in 0..<10 { #expect(policy.pauseAfterDeath(served: true) == 0) }
        #expect(policy.failures == 0)
        #expect(policy.pauseAfterDeath(served: false) == 0.1)
        #expect(policy.pauseAfterDeath(served: false) == 0.2)
        #expect(policy.pauseAfterDeath(served: false) == 0.4)
        #expect(policy.pauseAfterDeath(served: false) == 0.8)
        for _ in 0..<100 { #expect(policy.pauseAfterDeath(served: false) <= 1.0) }
        #expect(policy.pauseAfterDeath(served: false) == 1.0, "capped: never more than 1 s unserved")
        #expect(policy.failures == 105)
        #expect(policy.pauseAfterDeath(served: true) == 0, "a worker that served resets the count")
        #expect(policy.failures == 0)
        #expect(policy.pauseAfterDeath(served: false) == 0.1)
    }

    @Test("a pending worker's death: nothing mounted gives up, a reload keeps serving, no worker restarts")
    func pendingDeaths() {
        #expect(RestartPolicy.pendingDied(everServed: false, hasCurrent: false, exitCode: 2) == .giveUp(exitStatus: 2))
        #expect(RestartPolicy.pendingDied(everServed: false, hasCurrent: false, exitCode: nil) == .giveUp(exitStatus: 1))
        #expect(RestartPolicy.pendingDied(everServed: true, hasCurrent: true, exitCode: 1) == .keepServing(protocolRefused: false))
        #expect(RestartPolicy.pendingDied(everServed: true, hasCurrent: true, exitCode: 76) == .keepServing(protocolRefused: true))
        #expect(RestartPolicy.pendingDied(everServed: true, hasCurrent: false, exitCode: 1) == .restart)
    }
}

@Suite("in-flight page")
struct InflightPageTests {
    @Test("stamps and clears per slot; the culprit is the faulting slot's request; only a culprit seen before is poison")
    func page() throws {
        let base = UnsafeMutableRawPointer.allocate(byteCount: InflightPage.size, alignment: 8)
        defer { base.deallocate() }
        InflightPage.reset(base)
        #expect(InflightPage.isValid(UnsafeRawPointer(base)))
        #expect(InflightPage.requests(UnsafeRawPointer(base)).isEmpty)
        let lookup = InflightPage.Request(unique: 40, opcode: 1, node: 3)
        let read = InflightPage.Request(unique: 42, opcode: 15, node: 7)
        InflightPage.stamp(base, slot: 0, lookup)
        InflightPage.stamp(base, slot: 5, read)
        InflightPage.stamp(base, slot: InflightPage.slots, read)  // out of range: ignored
        #expect(Set(InflightPage.requests(UnsafeRawPointer(base))) == [lookup, read])
        InflightPage.clear(base, slot: 5)
        #expect(InflightPage.requests(UnsafeRawPointer(base)) == [lookup])
        #expect(InflightPage.culprit(UnsafeRawPointer(base)) == nil, "no fault marked")
        base.storeBytes(of: UInt32(1).littleEndian, toByteOffset: InflightPage.culpritOffset, as: UInt32.self)
        #expect(InflightPage.culprit(UnsafeRawPointer(base)) == lookup)
        // The resent copy carries bit 63; it is the same request.
        var resent = lookup
        resent.unique |= InflightPage.resendBit
        #expect(InflightPage.poisoned(previous: [lookup, read], culprit: resent) == resent)
        #expect(InflightPage.poisoned(previous: [read], culprit: resent) == nil, "a first crash is no proof")
        #expect(InflightPage.poisoned(previous: [lookup], culprit: nil) == nil, "a kill names no culprit")
        #expect(InflightPage.errorReply(resent, errno: 5) == [16, 0, 0, 0, 0xFB, 0xFF, 0xFF, 0xFF, 40, 0, 0, 0, 0, 0, 0, 0x80])
        #expect(!InflightPage.tracked(opcode: 2) && !InflightPage.tracked(opcode: 42) && InflightPage.tracked(opcode: 1))
        // A page of another layout is not read.
        base.storeBytes(of: UInt8(0), toByteOffset: 0, as: UInt8.self)
        #expect(InflightPage.requests(UnsafeRawPointer(base)).isEmpty)
    }
}

@Suite("view snapshot")
struct ViewSnapshotTests {
    @Test("views and listings round-trip, every kind of value; truncations and garbage are errors")
    func roundTrip() throws {
        let fields: [String: SecretValue] = [
            "S": .string("päss"), "I": .int(-5), "F": .float(1.5), "B": .bool(true), "N": .null,
            "A": .array([.int(1), .table(["k": .string("v")])]), "T": .table(["x": .bytes([0, 255])]),
            "D": .datetime("2024-01-01T00:00:00Z"), "E": .string(""),
        ]
        let view = EnvView(elements: [[fields, ["ONLY_DEFAULT": .string("d")]], [[:]]])
        let snapshot = ViewSnapshot(
            views: [ViewSnapshot.View(key: EnvKey(top: "vault", env: "production"), fetchedAt: 123.5, view: view)],
            listings: [ViewSnapshot.Listing(top: "vault", at: 99.25, envs: ["default", "production"])])
        let bytes = snapshot.encoded()
        let back = try ViewSnapshot.decode(bytes)
        #expect(back.listings == snapshot.listings)
        let first = try #require(back.views.first)
        #expect(first.key == EnvKey(top: "vault", env: "production") && first.fetchedAt == 123.5)
        #expect(first.view.keys == view.keys)
        for key in view.keys { #expect(first.view.value(of: key) == view.value(of: key), "\(key)") }
        for cut in [0, 3, 6, bytes.count / 2, bytes.count - 1] {
            #expect(throws: SecretsError.self) { _ = try ViewSnapshot.decode(Array(bytes[0..<cut])) }
        }
        #expect(throws: SecretsError.self) { _ = try ViewSnapshot.decode(bytes + [0]) }
    }

    @Test("version 2 carries the leased stores' leases (id, times, fields); without leases it is version 1, which still reads; a later version is refused")
    func leases() throws {
        let lease = CarriedLease(
            store: "db", role: "app", id: "database/creds/app/abc", fields: ["username": .string("u"), "password": .string("p")],
            renewable: true, duration: 6, renewAt: 1003.5, expires: 1006.25)
        let certificate = CarriedLease(
            store: "certs", role: "web", id: nil, fields: ["certificate": .string("PEM")], renewable: false, duration: 3600,
            renewAt: 4000, expires: 4600)
        let bytes = ViewSnapshot(leases: [lease, certificate]).encoded()
        let back = try ViewSnapshot.decode(bytes)
        #expect(back.leases.count == 2)
        let first = try #require(back.leases.first)
        #expect(first.store == "db" && first.role == "app" && first.id == "database/creds/app/abc" && first.renewable)
        #expect(first.duration == 6 && first.renewAt == 1003.5 && first.expires == 1006.25)
        #expect(first.fields == lease.fields)
        #expect(back.leases.last?.id == nil && back.leases.last?.fields == certificate.fields)
        // Without leases, version 1 (the previous release reads it): the same layout up to the listings.
        let old = ViewSnapshot(listings: [ViewSnapshot.Listing(top: "vault", at: 1, envs: ["default"])]).encoded()
        #expect(old[4] == 1 && old[5] == 0 && bytes[4] == 2)
        #expect(try ViewSnapshot.decode(old).leases.isEmpty && ViewSnapshot.decode(old).listings.count == 1)
        var later = bytes
        later[4] = 3
        #expect(throws: SecretsError.self) { _ = try ViewSnapshot.decode(later) }
    }
}
