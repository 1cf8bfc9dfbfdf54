import Handover
import Logging
import SecretsCore
import Testing

/// CSI volumes in the core, without a mount: the pod a cgroup names, the views' node records across workers,
/// access by pod and by Kubernetes identity.
@Suite("CSI volumes in the core")
struct CSIVolumeTests {
    let store = FakeStore(name: "fake", envs: ["production": ["DB_HOST": .string("db"), "PASSWORD": .string("pw")]])
    static let podUID = "1f2e3d4c-0000-4abc-9def-0123456789ab"
    static let podCgroup = "/kubepods/besteffort/pod\(podUID)/libpod-abc"

    let pod = PodIdentity(uid: podUID, name: "api-1", namespace: "billing", serviceAccount: "api")

    func volume(keys: [String] = ["DB_*"], group: UInt32? = nil) -> CSIVolume {
        CSIVolume(
            id: "csi-abc", top: "fake", env: "production", keys: keys, pod: pod, group: group,
            targetPath: "/var/lib/kubelet/pods/\(Self.podUID)/volumes/kubernetes.io~csi/secrets/mount")
    }

    /// A core whose callers' cgroups are `cgroups[pid]`.
    func core(access: String = "", cgroups: [Int32: String]) throws -> FileSystemCore {
        let config = try makeConfig(access, ttl: "60s", stale: "30s")
        let resolver = try Resolver(config: config, stores: ["fake": store])
        return FileSystemCore(
            config: config, resolver: resolver, logger: Logger(label: "test"),
            callerDetails: { pid in CallerDetails(exe: nil, cgroup: cgroups[pid], groups: []) })
    }

    @Test("the pod uid in a cgroup: kubelet's cgroupfs and systemd drivers; none outside a pod")
    func podUIDs() {
        #expect(PodIdentity.podUID(inCgroup: Self.podCgroup) == Self.podUID)
        #expect(
            PodIdentity.podUID(
                inCgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_0000_4abc_9def_0123456789ab.slice/cri-containerd-1.scope")
                == Self.podUID)
        #expect(PodIdentity.podUID(inCgroup: "/system.slice/secretsfs.service") == nil)
        #expect(PodIdentity.podUID(inCgroup: "/kubepods/podnot-a-uid/x") == nil)
        #expect(PodIdentity.podUID(inCgroup: "/kubepods/besteffort/POD\(Self.podUID)") == nil)
    }

    @Test("a view serves its pod only; pid 0 (no hostPID) is refused with a hint; keys outside the globs are absent")
    func views() throws {
        let core = try core(cgroups: [10: Self.podCgroup, 11: "/kubepods/besteffort/pod0000aaaa-0000-4abc-9def-0123456789ab/x"])
        #expect(try core.publish(volume()) == ".csi/csi-abc")
        let csi = try core.lookup(parent: FileSystemCore.rootInode, name: ".csi").attributes.inode
        let view = try core.lookup(parent: csi, name: "csi-abc").attributes.inode
        let inPod = Caller(uid: 65534, gid: 65534, pid: 10)
        let file = try core.lookup(parent: view, name: "DB_HOST", caller: inPod)
        #expect(file.entryTimeout == 0, "every open through a view is checked")
        #expect(file.attributes.mode == 0o444)
        #expect(try core.contents(file.attributes.inode).copyBytes() == Array("db".utf8))
        let absent = #expect(throws: SecretsError.self) { try core.lookup(parent: view, name: "PASSWORD", caller: inPod) }
        #expect(absent?.code == .notFound)
        #expect(try core.list(view, caller: inPod).map(\.name) == ["DB_HOST"])
        for pid: Int32 in [11, 0, 12] {
            do {
                _ = try core.lookup(parent: view, name: "DB_HOST", caller: Caller(uid: 0, gid: 0, pid: pid))
                Issue.record("pid \(pid) was served")
            } catch {
                #expect(error.code == .permissionDenied)
                #expect(error.message.contains("hostPID") == (pid == 0), "\(error.message)")
            }
            #expect(throws: SecretsError.self) { try core.list(view, caller: Caller(uid: 0, gid: 0, pid: pid)) }
        }
        #expect(try core.list(csi).isEmpty, "volume ids are not listed")
        #expect(!(try core.list(FileSystemCore.rootInode).map(\.name).contains(".csi")))
    }

    @Test("publish: the same volume again is the same view; another one under its id is refused; unknown names")
    func publishing() throws {
        let core = try core(cgroups: [:])
        #expect(try core.publish(volume()) == ".csi/csi-abc")
        #expect(try core.publish(volume()) == ".csi/csi-abc")
        #expect(throws: FileSystemCore.VolumeRefusal.self) { try core.publish(volume(keys: ["PASSWORD"])) }
        var other = volume()
        other.id = "csi-2"
        other.top = "nosuch"
        #expect(throws: FileSystemCore.VolumeRefusal(attribute: "path", message: "no store or scope 'nosuch' (have: fake)")) {
            try core.publish(other)
        }
        other.top = "fake"
        other.keys = ["NOPE_*"]
        #expect(throws: FileSystemCore.VolumeRefusal(attribute: "keys", message: "'NOPE_*' matches no key in 'fake/production'")) {
            try core.publish(other)
        }
        #expect(core.unpublish("csi-abc"))
        #expect(!core.unpublish("csi-abc"))
        #expect(core.volumes.isEmpty)
    }

    @Test("a k8s: rule admits a pod by namespace and service account; fsGroup makes the view 0440 of that group")
    func identities() throws {
        let access = """
            [[access]]
            path = "fake/production/PASSWORD"
            allow = ["k8s:billing/api"]
            """
        let core = try core(access: access, cgroups: [10: Self.podCgroup])
        _ = try core.publish(volume(keys: [], group: 2000))
        let csi = try core.lookup(parent: FileSystemCore.rootInode, name: ".csi").attributes.inode
        let view = try core.lookup(parent: csi, name: "csi-abc").attributes.inode
        let caller = Caller(uid: 65534, gid: 65534, pid: 10)
        let password = try core.lookup(parent: view, name: "PASSWORD", caller: caller)
        #expect(password.attributes.gid == 2000 && password.attributes.mode == 0o440)
        #expect(try core.attributes(view).0.mode == 0o550)
        // The tree's own name stays the [mount] owner's: the view has nodes of its own.
        #expect(CallerPattern("k8s:billing/api") == .k8s(namespace: "billing", serviceAccount: "api"))
        #expect(CallerPattern("k8s:billing") == nil && CallerPattern("k8s:/api") == nil)

        let other = try self.core(access: access.replacingOccurrences(of: "billing/api", with: "billing/batch"), cgroups: [10: Self.podCgroup])
        _ = try other.publish(volume(keys: []))
        let otherCSI = try other.lookup(parent: FileSystemCore.rootInode, name: ".csi").attributes.inode
        let otherView = try other.lookup(parent: otherCSI, name: "csi-abc").attributes.inode
        #expect(throws: SecretsError.self) { try other.lookup(parent: otherView, name: "PASSWORD", caller: caller) }
        #expect(try other.lookup(parent: otherView, name: "DB_HOST", caller: caller).attributes.size == 2)
    }

    @Test("volume records survive the handover codec and a new worker; unpublish removes them from the table")
    func records() throws {
        let journal = RecordingJournal()
        let first = try core(cgroups: [10: Self.podCgroup])
        first.adopt([], nextInode: 2, handoff: NodeHandoff(journal: journal, digest: testDigest))
        _ = try first.publish(volume(group: 7))
        let csi = try first.lookup(parent: FileSystemCore.rootInode, name: ".csi").attributes.inode
        let view = try first.lookup(parent: csi, name: "csi-abc").attributes.inode
        let file = try first.lookup(parent: view, name: "DB_HOST", caller: Caller(uid: 1, gid: 1, pid: 10)).attributes.inode
        let table = journal.table.withLock { $0 }
        #expect(table.holdsVolumes)
        for message in journal.messages.withLock({ $0 }) {
            #expect(try HandoverMessage.decode(message.encoded()) == message)
        }
        #expect(try NodeTable.decode(table.encoded()) == table)
        // A later worker serves the same view under the same ids.
        let second = try core(cgroups: [10: Self.podCgroup])
        let secondJournal = RecordingJournal()
        second.adopt(table.records, nextInode: table.highestInode + 1, handoff: NodeHandoff(journal: secondJournal, digest: testDigest))
        #expect(second.volumes["csi-abc"] == volume(group: 7))
        #expect(try second.contents(file).copyBytes() == Array("db".utf8))
        #expect(try second.attributes(file).0.gid == 7)
        #expect(try second.lookup(parent: csi, name: "csi-abc").attributes.inode == view)
        #expect(second.unpublish("csi-abc"))
        secondJournal.table.withLock { $0 = table }
        var after = table
        for message in secondJournal.messages.withLock({ $0 }) { after.apply(message) }
        #expect(!after.holdsVolumes)
    }
}

@Suite("lease_per identities")
struct LeasePerTests {
    @Test("unit: the cgroup up to the last service or scope; pod: up to the pod's cgroup, cgroupfs and systemd forms; none for a process of neither")
    func identities() {
        #expect(LeasePer.unit.identity(ofCgroup: "/system.slice/billing.service") == "/system.slice/billing.service")
        #expect(LeasePer.unit.identity(ofCgroup: "/system.slice/billing.service/worker") == "/system.slice/billing.service")
        #expect(LeasePer.unit.identity(ofCgroup: "/user.slice/user-0.slice/session-3.scope") == "/user.slice/user-0.slice/session-3.scope")
        #expect(LeasePer.unit.identity(ofCgroup: "/") == nil)
        let uid = "0b7c6f0e-1111-2222-3333-444455556666"
        #expect(LeasePer.pod.identity(ofCgroup: "/kubepods/besteffort/pod\(uid)/abc123") == "/kubepods/besteffort/pod\(uid)")
        let systemd = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uid.replacingOccurrences(of: "-", with: "_")).slice/cri-containerd-1.scope"
        #expect(LeasePer.pod.identity(ofCgroup: systemd)?.hasSuffix(".slice") == true)
        #expect(LeasePer.pod.identity(ofCgroup: "/system.slice/billing.service") == nil)
        let env = LeasePer.env("app", identity: "/system.slice/billing.service")
        #expect(LeasePer.baseEnv(env) == "app" && LeasePer.identity(in: env) == "/system.slice/billing.service")
        #expect(LeasePer.baseEnv("app") == "app" && LeasePer.identity(in: "app") == nil)
    }
}
