import Foundation
import Testing
import TestSupport

/// The CSI node plugin ([csi]) as kubelet uses it: a Python stand-in makes kubelet's calls on the plugin's socket;
/// pods are real containers (podman + runc) in the pod's cgroup, reading the target path kubelet would bind.
@Suite("Kubernetes CSI volumes", .serialized)
struct CSITests {
    static let secrets = """
        [default]
        PORT = 1234

        [production]
        PASSWORD = "pw-1"
        DB_HOST = "db-1"
        DB_USER = "app"
        API_TOKEN = "tok-1"
        """

    /// A mount with [csi] on a socket in the fixture, an audit log, and `extra` TOML.
    func mount(_ fixture: Fixture, extra: String = "", mountOptions: String = "", arguments: [String] = []) throws
        -> (MountedSecretsFS, CSIKubelet)
    {
        _ = try PodmanReader.requireRuntime()
        chmod(fixture.dir.path, 0o755)
        try fixture.writeEncrypted("secrets.toml.age", Self.secrets)
        let config = try fixture.writeConfig(extra: """
            [csi]
            socket = "\(fixture.dir.file("csi.sock"))"
            node_id = "node-a"

            [audit]
            path = "\(fixture.dir.file("audit.log"))"
            paths = ["local/production/*"]

            \(extra)
            """)
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "[mount]\n",
            with: "[mount]\nallow_other = true\ntakeover_socket = \"\(fixture.dir.file("takeover/takeover.sock"))\"\n\(mountOptions)")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try fixture.mount(config: config, arguments: arguments)
        let kubelet = try CSIKubelet(socket: fixture.dir.file("csi.sock"), root: fixture.dir.file("kubelet"))
        try kubelet.waitUntilServing()
        return (fs, kubelet)
    }

    /// Unmounts whatever a failed test left at kubelet's target paths.
    func cleanUp(_ kubelet: CSIKubelet) {
        if let mounts = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) {
            for line in mounts.split(separator: "\n") {
                let fields = line.split(separator: " ")
                if fields.count > 4, fields[4].hasPrefix(kubelet.root) { umount2(String(fields[4]), Int32(MNT_DETACH)) }
            }
        }
        kubelet.remove()
    }

    /// kubelet's directory as a shared mount, as a node's is: a DaemonSet pod's mounts under it (Bidirectional)
    /// reach the host's namespace and back. Returns the unmount for teardown.
    func shareKubeletRoot(_ kubelet: CSIKubelet) throws -> () -> Void {
        try FileManager.default.createDirectory(atPath: kubelet.root, withIntermediateDirectories: true)
        for arguments in [["--bind", kubelet.root, kubelet.root], ["--make-shared", kubelet.root]] {
            let result = try run(["/usr/bin/mount"] + arguments, timeout: 10)
            guard result.status == 0 else { throw TestFailure.message("mount \(arguments): \(result.stderr)") }
        }
        return { umount2(kubelet.root, Int32(MNT_DETACH)) }
    }

    /// A worker SIGKILL, then a reload (SIGHUP), each followed by more good reads of `reader`.
    func crashAndReload(_ fs: MountedSecretsFS, under reader: PodmanReader) throws {
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        try reader.waitForReads()
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        try reader.waitForReads()
    }

    func publish(
        _ kubelet: CSIKubelet, _ pod: TestPod, volume: String = "secrets", path: String = "local/production",
        keys: String? = nil, fsGroup: Int? = nil, readonly: Bool = true, extra: [String: String] = [:]
    ) throws -> CSIKubelet.Answer {
        var attributes = ["path": path].merging(extra) { _, new in new }
        if let keys { attributes["keys"] = keys }
        var arguments: [String: Any] = [
            "volume_id": "csi-\(pod.uid.prefix(8))-\(volume)", "target_path": kubelet.targetPath(podUID: pod.uid, volume: volume),
            "readonly": readonly, "attributes": attributes, "pod": pod.context,
        ]
        if let fsGroup { arguments["fs_group"] = fsGroup }
        return try kubelet.call("publish", arguments)
    }

    func unpublish(_ kubelet: CSIKubelet, _ pod: TestPod, volume: String = "secrets") throws -> CSIKubelet.Answer {
        try kubelet.call("unpublish", [
            "volume_id": "csi-\(pod.uid.prefix(8))-\(volume)", "target_path": kubelet.targetPath(podUID: pod.uid, volume: volume),
        ])
    }

    func mountCount(at path: String) -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { $0.split(separator: " ").dropFirst(4).first.map(String.init) == path }.count
    }

    /// open(2) + read of an absolute path with a timeout: the bytes, or the errno.
    func readFile(_ path: String, _ fs: MountedSecretsFS) throws -> Result<String, FSError> {
        try withTimeout(10, onTimeout: fs.abortConnection) {
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { return .failure(FSError(code: errno)) }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = read(fd, &buffer, buffer.count)
            guard count >= 0 else { return .failure(FSError(code: errno)) }
            return .success(String(decoding: buffer[0..<count], as: UTF8.self))
        }
    }

    @Test("kubelet's calls: plugin info, capabilities, probe; a pod reads its view through a worker SIGKILL and a reload")
    func publishAndServe() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let (fs, kubelet) = try mount(fixture)
        defer { cleanUp(kubelet) }
        let info = try kubelet.call("info")
        #expect(info.ok && info.fields["name"] == "csi.secretsfs.dev" && info.fields["node_id"] == "node-a")
        #expect(info.fields["ready"] == "1" || info.fields["ready"] == "true", "\(info.fields)")
        #expect(info.fields["node_capabilities"]?.contains("VOLUME_MOUNT_GROUP") == true, "\(info.fields)")

        let pod = TestPod(name: "api-7d9f", namespace: "billing", serviceAccount: "api")
        let published = try publish(kubelet, pod, keys: "DB_*,PASSWORD")
        #expect(published.ok, "\(published.code ?? "") \(published.details)")
        let target = kubelet.targetPath(podUID: pod.uid, volume: "secrets")
        #expect(mountCount(at: target) == 1)
        // kubelet retries a publish it did not see answered: the same call again changes nothing.
        #expect(try publish(kubelet, pod, keys: "DB_*,PASSWORD").ok)
        #expect(mountCount(at: target) == 1)
        // The bind is read-only and shows only the keys the globs name.
        let options = (try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)).split(separator: "\n")
            .first { $0.split(separator: " ").dropFirst(4).first.map(String.init) == target }.map(String.init) ?? ""
        #expect(options.split(separator: " ").dropFirst(5).first?.hasPrefix("ro") == true, "\(options)")
        #expect(!(try fs.list("")).contains(".csi"), "the views' directory is not listed")

        let listing = try PodmanReader.runOnce(
            source: target, script: "ls /run/secrets; id -u", cgroupParent: pod.cgroupParent)
        #expect(listing.stdoutText.split(separator: "\n") == ["DB_HOST", "DB_USER", "PASSWORD", "65534"], "\(listing.stdoutText) \(listing.stderr)")

        let reader = try PodmanReader(
            source: target, files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"], "DB_USER": ["app"]], seconds: 120,
            cgroupParent: pod.cgroupParent)
        defer { reader.stop() }
        try reader.waitForReads()
        try crashAndReload(fs, under: reader)
        // The volume, recorded with the supervisor's node table, is still published in the new worker.
        try kubelet.waitUntilServing()
        #expect(try publish(kubelet, pod, keys: "DB_*,PASSWORD").ok)
        #expect(mountCount(at: target) == 1)
        let report = try reader.wait(timeout: 60, onTimeout: fs.abortConnection)
        #expect(report.failed == 0 && report.unexpected == 0, "\(report.failed) failed, \(report.unexpected) unexpected")
        #expect(report.ok >= 20)

        // Audit lines carry the pod's identity.
        let audit = try String(contentsOfFile: fixture.dir.file("audit.log"), encoding: .utf8)
        let line = audit.split(separator: "\n").last { $0.contains("\"via\":\"csi\"") }.map(String.init) ?? ""
        #expect(line.contains("\"namespace\":\"billing\"") && line.contains("\"pod\":\"api-7d9f\"")
            && line.contains("\"service_account\":\"api\""), "\(line)")
        #expect(!audit.contains("pw-1") && !fs.log.contains("pw-1") && !fs.log.contains("db-1"))

        // Unpublish removes the mount and the directory; repeated, it still succeeds.
        #expect(try unpublish(kubelet, pod).ok)
        #expect(mountCount(at: target) == 0 && !FileManager.default.fileExists(atPath: target))
        #expect(try unpublish(kubelet, pod).ok)
        #expect(try publish(kubelet, pod, keys: "DB_*,PASSWORD").ok)
        #expect(mountCount(at: target) == 1)
        #expect(try unpublish(kubelet, pod).ok)
    }

    @Test("with directory_events, a watch on a pod's volume directory sees a changed key it shows as IN_MODIFY and IN_CLOSE_WRITE of its name, and nothing of a key it does not show; the pod reads the new value")
    func volumeDirectoryEvents() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let (fs, kubelet) = try mount(fixture, mountOptions: "directory_events = true\n")
        defer { cleanUp(kubelet) }
        let pod = TestPod(name: "web-5c2a", namespace: "shop", serviceAccount: "web")
        let published = try publish(kubelet, pod, keys: "PASSWORD")
        #expect(published.ok, "\(published.code ?? "") \(published.details)")
        let target = kubelet.targetPath(podUID: pod.uid, volume: "secrets")
        // The watch is on the bind mount's root, the view's directory (inotify watches inodes, whoever looks).
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        try #require(fd >= 0)
        defer { close(fd) }
        let wd = try withTimeout(10, onTimeout: fs.abortConnection) {
            inotify_add_watch(fd, target, UInt32(IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_CREATE))
        }
        try #require(wd >= 0, "inotify_add_watch: errno \(errno)")
        let config = fixture.dir.file("config.toml")
        #expect(try fixture.cli(["set", "--config", config, "local", "production", "PASSWORD=pw-2", "DB_HOST=db-2"]).status == 0)
        let seen = InotifyTests.namedEvents(fd, seconds: 10) { events in
            events.contains { $0.name == "PASSWORD" && $0.mask & UInt32(IN_CLOSE_WRITE) != 0 }
        }
        #expect(seen.contains { $0.name == "PASSWORD" && $0.mask & UInt32(IN_MODIFY) != 0 }, "\(seen)")
        #expect(!seen.contains { $0.name == "DB_HOST" }, "\(seen)")
        let read = try PodmanReader.runOnce(source: target, script: "cat /run/secrets/PASSWORD", cgroupParent: pod.cgroupParent)
        #expect(read.stdoutText == "pw-2", "\(read.stderr)")
        #expect(!fs.log.contains("pw-2"))
        #expect(try unpublish(kubelet, pod).ok)
    }

    @Test("another pod and a node process get EACCES on a pod's view; k8s: rules and fsGroup")
    func perPodIdentity() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let (fs, kubelet) = try mount(fixture, extra: """
            [[access]]
            path = "local/production/API_TOKEN"
            allow = ["k8s:billing/api"]
            """)
        defer { cleanUp(kubelet) }
        let api = TestPod(name: "api-1", namespace: "billing", serviceAccount: "api")
        let batch = TestPod(name: "batch-1", namespace: "billing", serviceAccount: "batch")
        #expect(try publish(kubelet, api).ok)
        #expect(try publish(kubelet, batch, fsGroup: 2000).ok)
        let apiTarget = kubelet.targetPath(podUID: api.uid, volume: "secrets")
        let batchTarget = kubelet.targetPath(podUID: batch.uid, volume: "secrets")

        let own = try PodmanReader.runOnce(
            source: apiTarget, script: "cat /run/secrets/PASSWORD; echo; cat /run/secrets/API_TOKEN",
            cgroupParent: api.cgroupParent)
        #expect(own.status == 0 && own.stdoutText == "pw-1\ntok-1", "\(own.stderr)")
        // The other pod, given the first pod's target path, is refused: the view serves one pod's cgroup.
        let other = try PodmanReader.runOnce(
            source: apiTarget, script: "cat /run/secrets/PASSWORD; echo status=$?", cgroupParent: batch.cgroupParent)
        #expect(other.stdoutText.contains("status=1") && other.stderr.contains("Permission denied"), "\(other.stdoutText) \(other.stderr)")
        // A process of the node (this test, root, in no pod) is refused too.
        #expect(try readFile(apiTarget + "/PASSWORD", fs) == .failure(FSError(code: EACCES)))
        // The access rule names a Kubernetes identity: batch's own view serves it everything but API_TOKEN.
        let rule = try PodmanReader.runOnce(
            source: batchTarget, script: "cat /run/secrets/DB_HOST; echo; cat /run/secrets/API_TOKEN; echo status=$?",
            cgroupParent: batch.cgroupParent, groups: [2000])
        #expect(rule.stdoutText.hasPrefix("db-1\n") && rule.stdoutText.contains("status=1"), "\(rule.stdoutText) \(rule.stderr)")
        // fsGroup: the view's files are group 2000, mode 0440, so without the group the pod's user cannot read.
        let attributes = try PodmanReader.runOnce(
            source: batchTarget, script: "stat -c '%g %a' /run/secrets/DB_HOST /run/secrets", cgroupParent: batch.cgroupParent,
            groups: [2000])
        #expect(attributes.stdoutText == "2000 440\n2000 550\n", "\(attributes.stdoutText) \(attributes.stderr)")
        let noGroup = try PodmanReader.runOnce(
            source: batchTarget, script: "cat /run/secrets/DB_HOST; echo status=$?", cgroupParent: batch.cgroupParent)
        #expect(noGroup.stdoutText.contains("status=1"), "\(noGroup.stdoutText)")
        let audit = try String(contentsOfFile: fixture.dir.file("audit.log"), encoding: .utf8)
        #expect(audit.contains("\"decision\":\"denied\"") && audit.contains("\"service_account\":\"batch\""))
        // The other pod at the first pod's view: denied, by the view, with its own identity.
        let refusedAtView = audit.split(separator: "\n").filter {
            $0.contains("\"via\":\"csi\"") && $0.contains("\"decision\":\"denied\"") && $0.contains("PASSWORD")
                && $0.contains(batch.uid)
        }
        #expect(!refusedAtView.isEmpty, "\(audit)")
        #expect(try unpublish(kubelet, api).ok && unpublish(kubelet, batch).ok)
    }

    @Test("refusals name the attribute: unknown scope, env, key glob; not read-only; block; no pod info; unknown key")
    func refusals() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let (_, kubelet) = try mount(fixture)
        defer { cleanUp(kubelet) }
        let pod = TestPod(name: "p", namespace: "n", serviceAccount: "s")
        let cases: [(CSIKubelet.Answer, String)] = [
            (try publish(kubelet, pod, path: "nosuch/production"), "no store or scope 'nosuch'"),
            (try publish(kubelet, pod, path: "local/staging"), "no env 'staging'"),
            (try publish(kubelet, pod, keys: "DB_*,NOPE_*"), "'NOPE_*' matches no key"),
            (try publish(kubelet, pod, readonly: false), "readonly"),
            (try publish(kubelet, pod, extra: ["pth": "x"]), "volume attribute 'pth' is unknown"),
            (try publish(kubelet, pod, path: "local"), "volume attribute 'path'"),
            (try kubelet.call("publish", [
                "volume_id": "v1", "target_path": kubelet.targetPath(podUID: pod.uid, volume: "v"),
                "attributes": ["path": "local/production", "csi.storage.k8s.io/ephemeral": "true"],
            ]), "podInfoOnMount"),
            (try kubelet.call("publish", [
                "volume_id": "v2", "target_path": kubelet.targetPath(podUID: pod.uid, volume: "v"), "block": true,
                "attributes": ["path": "local/production"], "pod": pod.context,
            ]), "block"),
        ]
        for (answer, expected) in cases {
            #expect(!answer.ok && answer.code == "INVALID_ARGUMENT" && answer.details.contains(expected), "\(answer)")
        }
        // Nothing was left mounted or created by a refused publish.
        #expect(!FileManager.default.fileExists(atPath: kubelet.root + "/pods/\(pod.uid)/volumes/kubernetes.io~csi/secrets/mount"))
    }

    @Test("a pod reads on through a worker SIGKILL, a reload and a takeover by another secretsfs process in its own mount namespace; the old one idles, then exits 0 on SIGTERM")
    func takeover() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        // As the DaemonSet runs it: after handing over, the old process idles until its pod is deleted.
        let (first, kubelet) = try mount(fixture, arguments: ["--after-handover", "wait"])
        let unshareRoot = try shareKubeletRoot(kubelet)
        defer {
            cleanUp(kubelet)
            unshareRoot()
        }
        let socket = fixture.dir.file("takeover/takeover.sock")
        var info = stat()
        #expect(stat(fixture.dir.file("takeover"), &info) == 0 && info.st_mode & 0o777 == 0o700)
        let pod = TestPod(name: "api-1", namespace: "billing", serviceAccount: "api")
        #expect(try publish(kubelet, pod).ok)
        let target = kubelet.targetPath(podUID: pod.uid, volume: "secrets")
        let reader = try PodmanReader(
            source: target, files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"]], seconds: 120,
            cgroupParent: pod.cgroupParent)
        defer { reader.stop() }
        try reader.waitForReads()

        // Under the same read loop: a worker SIGKILL and a reload first, as a DaemonSet pod lives through them.
        try crashAndReload(first, under: reader)

        // A client that speaks only a future protocol is refused, and the running supervisor keeps serving.
        let future = try run(["/usr/bin/python3", "-c", """
            import socket, struct, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(sys.argv[1])
            s.send(b"SFST" + bytes([1]) + struct.pack("<HH", 9, 9))
            reply = s.recv(65536)
            print(reply[4], reply[9:].decode())
            """, socket], timeout: 30)
        #expect(future.stdoutText.hasPrefix("5 ") && future.stdoutText.contains("9 to 9"), "\(future.stdoutText) \(future.stderr)")
        try first.waitForLog("takeover refused; this supervisor keeps serving")
        try reader.waitForReads()
        #expect(first.process.isRunning)

        // The next DaemonSet pod: its own mount namespace (mounts under kubelet's directory shared), the same
        // config; it finds the socket answering and takes over.
        let second = try MountedSecretsFS(
            binary: fixture.binary, config: fixture.dir.file("config.toml"), mountpoint: fixture.mountpoint,
            logPath: fixture.dir.file("second.log"),
            launcher: ["/usr/bin/unshare", "--mount", "--propagation", "unchanged"])
        defer { second.stop() }
        try second.waitForLog("took the mount over: the new worker serves")
        try first.waitForLog("handed the mount over; exiting without unmounting")
        try reader.waitForReads()
        // It holds nothing more (no worker, no takeover socket): SIGTERM, as at pod deletion, exits 0 and unmounts
        // nothing.
        #expect(first.process.isRunning)
        #expect(first.signal(SIGTERM, wait: 20) == 0)
        try reader.waitForReads()
        // The new supervisor keeps its own workers: one SIGKILLed is replaced on the same connection.
        let newWorker = try #require(second.workerPID())
        kill(newWorker, SIGKILL)
        try second.waitForLog("a new worker serves the connection")
        try reader.waitForReads()
        // The published volume moved with the node table: the new worker's plugin still knows it.
        try kubelet.waitUntilServing()
        #expect(try publish(kubelet, pod).ok)
        #expect(mountCount(at: target) == 1)
        let report = try reader.wait(timeout: 60, onTimeout: second.abortConnection)
        #expect(report.failed == 0 && report.unexpected == 0, "\(report.failed) failed, \(report.unexpected) unexpected")
        #expect(try unpublish(kubelet, pod).ok)
        #expect(mountCount(at: target) == 0, "the unmount in the new namespace reaches the host's")
        #expect(!first.log.contains("pw-1") && !second.log.contains("pw-1"))

        // --take-over with nothing to take over is an error, not a fresh mount.
        let nothing = try fixture.dir.write("nothing.toml", """
            [mount]
            path = "\(fixture.dir.file("mnt2"))"
            takeover_socket = "\(fixture.dir.file("none/takeover.sock"))"
            [stores.env]
            type = "env"
            """)
        let refused = try fixture.cli(["mount", "--config", nothing, "--take-over"])
        #expect(refused.status == 1 && refused.stderr.contains("no supervisor answers"), "\(refused.stderr)")
    }
}
