import Foundation

/// Kubernetes volumes: NodePublishVolume to the first read of the pod's view (kubelet's side played by a Python
/// gRPC client whose stubs come from Sources/CSIPlugin/csi.proto, the reader in the pod's cgroup), and the longest
/// pause 4 readers see while an independent secretsfs process takes the mount over, against the same readers'
/// longest read with nothing happening, in the same run.
enum CSIBench {
    static let script = """
        import json, os, sys, time, uuid
        sys.path.insert(0, sys.argv[1])
        import grpc, csi_pb2 as pb, csi_pb2_grpc as rpc
        socket, root, rounds = sys.argv[2], sys.argv[3], int(sys.argv[4])
        node = rpc.NodeStub(grpc.insecure_channel("unix:" + socket))
        uid = str(uuid.uuid4())
        # This process joins the pod's cgroup, as a container of the pod would be: in the unified hierarchy, or on a
        # cgroup v1 host in systemd's named one (what the daemon reads there).
        base = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/systemd"
        cgroup = base + "/kubepods/besteffort/pod" + uid
        os.makedirs(cgroup, exist_ok=True)
        with open(cgroup + "/cgroup.procs", "w") as f: f.write(str(os.getpid()))
        capability = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
            access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY))
        context = {"path": "local/production", "csi.storage.k8s.io/pod.name": "bench", "csi.storage.k8s.io/pod.namespace": "bench",
            "csi.storage.k8s.io/pod.uid": uid, "csi.storage.k8s.io/serviceAccount.name": "bench", "csi.storage.k8s.io/ephemeral": "true"}
        samples = []
        for index in range(rounds):
            target = "%s/pods/%s/volumes/kubernetes.io~csi/v%d/mount" % (root, uid, index)
            volume = "csi-bench-%d" % index
            begin = time.perf_counter()
            node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
            node.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id=volume, target_path=target,
                volume_capability=capability, readonly=True, volume_context=context), timeout=30)
            with open(target + "/PASSWORD", "rb") as f: f.read()
            samples.append(time.perf_counter() - begin)
            node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume, target_path=target), timeout=30)
        with open(base + "/cgroup.procs", "w") as f: f.write(str(os.getpid()))
        os.rmdir(cgroup)
        samples.sort()
        print(json.dumps({"p50": samples[len(samples) // 2] * 1e3, "max": samples[-1] * 1e3, "grpc": grpc.__version__}))
        """

    static func run(binary: String, root: String, seconds: Double, python: String?) {
        print("Kubernetes CSI volumes and takeover (local store):")
        guard let python else {
            print("  skipped: needs the project venv's python (make bench passes it)")
            return
        }
        let dir = root + "/csi"
        let mountpoint = dir + "/mnt"
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let stubs = dir + "/stubs"
        try? FileManager.default.createDirectory(atPath: stubs, withIntermediateDirectories: true)
        let proto = FileManager.default.currentDirectoryPath + "/Sources/CSIPlugin"
        let (generated, output) = shell([
            python, "-m", "grpc_tools.protoc", "-I", proto, "--python_out=\(stubs)", "--grpc_python_out=\(stubs)",
            proto + "/csi.proto",
        ])
        guard generated == 0 else {
            print("  skipped: cannot generate the CSI stubs (run from the repository; make deps): \(output)")
            return
        }
        let config = dir + "/config.toml"
        let text = """
            [mount]
            path = "\(mountpoint)"
            allow_other = true
            takeover_socket = "\(dir)/takeover/takeover.sock"
            [cache]
            ttl = "10m"
            fresh = ["FRESH_*"]
            [csi]
            socket = "\(dir)/csi.sock"
            [stores.local]
            type = "file"
            files = ["\(root)/secrets.toml.age"]
            identity = "\(root)/identity.txt"
            """
        try? text.write(toFile: config, atomically: true, encoding: .utf8)
        func start(_ log: String) -> Process? {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["mount", "--config", config, "--log-level", "notice"]
            process.standardInput = FileHandle.nullDevice
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            process.standardError = FileHandle(forWritingAtPath: log)
            return (try? process.run()) != nil ? process : nil
        }
        guard let first = start(dir + "/first.log") else { return }
        var stopped: [Process] = [first]
        defer {
            for process in stopped where process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
            if isMounted(mountpoint) { shell(["/usr/bin/fusermount3", "-u", "-z", mountpoint]) }
        }
        let probe = mountpoint + "/local/production/FRESH_PASSWORD"
        for _ in 0..<2000 where !(isMounted(mountpoint) && FileManager.default.fileExists(atPath: dir + "/csi.sock") && access(probe, R_OK) == 0) {
            usleep(5000)
        }
        let (status, answer) = shell([python, "-c", script, stubs, dir + "/csi.sock", dir + "/kubelet", "20"])
        if status == 0, let data = answer.split(separator: "\n").last.map({ Data($0.utf8) }),
            let result = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let p50 = result["p50"] as? Double, let worst = result["max"] as? Double
        {
            print("  NodePublishVolume -> first read of the view (bind mount, 20 volumes, grpcio \(result["grpc"] ?? "?")): p50 \(fmt(p50, 1)) ms, max \(fmt(worst, 1)) ms")
        } else {
            print("  NodePublishVolume: the kubelet stand-in failed: \(answer.suffix(400))")
        }

        let quiet = FailoverBench.Readers(path: probe, threads: 4)
        usleep(useconds_t(seconds * 1e6))
        let baseline = quiet.finish()
        let readers = FailoverBench.Readers(path: probe, threads: 4)
        usleep(300_000)
        let begin = nanoseconds()
        guard let second = start(dir + "/second.log") else { return }
        stopped.append(second)
        while first.isRunning && nanoseconds() - begin < 30_000_000_000 { usleep(1000) }
        let handover = Double(nanoseconds() - begin) / 1e9
        usleep(useconds_t(max(0.5, seconds / 2) * 1e6))
        let during = readers.finish()
        print("  no switch: longest read \(fmt(baseline.longestMs, 2)) ms over \(baseline.reads) reads, \(baseline.failures) failed")
        print("  takeover by a second process (start to the old one's exit \(fmt(handover, 2)) s): longest read \(fmt(during.longestMs, 2)) ms (\(fmt(during.longestMs / max(baseline.longestMs, 0.001), 1))x the no-switch longest), \(during.reads) reads, \(during.failures) failed, old exit status \(first.isRunning ? "still running" : "\(first.terminationStatus)")")
        let met = during.longestMs < 100 && during.failures == 0 && !first.isRunning
        print("target: longest read during a takeover < 100 ms with zero failed reads: \(met ? "met" : "NOT met")")
    }
}
