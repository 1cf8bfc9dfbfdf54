import Foundation

/// kubelet's side of a CSI node plugin, played by a Python gRPC client (grpcio in the project venv) whose stubs are
/// generated from this repository's `Sources/CSIPlugin/csi.proto`. It calls what kubelet calls, in kubelet's order
/// (NodeGetCapabilities, then NodePublishVolume; NodeUnpublishVolume at pod deletion), with kubelet's target path
/// layout and volume_context keys. Each call prints one JSON line; a gRPC error is `{"code": ..., "details": ...}`.
public final class CSIKubelet: Sendable {
    public let socket: String
    /// kubelet's root directory (`/var/lib/kubelet` on a node).
    public let root: String
    let folder: TemporaryDirectory
    let python: String

    static let script = #"""
        import json, sys, grpc
        sys.path.insert(0, sys.argv[1])
        import csi_pb2 as pb, csi_pb2_grpc as rpc

        socket, call = sys.argv[2], sys.argv[3]
        args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        channel = grpc.insecure_channel("unix:" + socket)
        identity, node = rpc.IdentityStub(channel), rpc.NodeStub(channel)

        def answer(body):
            try:
                print(json.dumps({"ok": True, **body()}))
            except grpc.RpcError as error:
                print(json.dumps({"ok": False, "code": error.code().name, "details": error.details()}))

        def info():
            plugin = identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
            caps = identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=10)
            probe = identity.Probe(pb.ProbeRequest(), timeout=10)
            node_info = node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
            node_caps = node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
            return {
                "name": plugin.name, "vendor_version": plugin.vendor_version,
                "plugin_capabilities": len(caps.capabilities),
                "ready": probe.ready.value if probe.HasField("ready") else None,
                "node_id": node_info.node_id,
                "node_capabilities": [pb.NodeServiceCapability.RPC.Type.Name(c.rpc.type) for c in node_caps.capabilities],
            }

        def publish():
            # kubelet asks whether the driver takes fsGroup as volume_mount_group before it publishes.
            node_caps = node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
            takes_group = any(c.rpc.type == pb.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP for c in node_caps.capabilities)
            mount = pb.VolumeCapability.MountVolume()
            if takes_group and args.get("fs_group") is not None:
                mount.volume_mount_group = str(args["fs_group"])
            capability = pb.VolumeCapability(
                mount=mount,
                access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY))
            if args.get("block"):
                capability = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=capability.access_mode)
            context = dict(args.get("attributes", {}))
            pod = args.get("pod")
            if pod:
                context.update({
                    "csi.storage.k8s.io/pod.name": pod["name"],
                    "csi.storage.k8s.io/pod.namespace": pod["namespace"],
                    "csi.storage.k8s.io/pod.uid": pod["uid"],
                    "csi.storage.k8s.io/serviceAccount.name": pod["service_account"],
                    "csi.storage.k8s.io/ephemeral": "true",
                })
            node.NodePublishVolume(pb.NodePublishVolumeRequest(
                volume_id=args["volume_id"], target_path=args["target_path"], volume_capability=capability,
                readonly=args.get("readonly", True), volume_context=context), timeout=30)
            return {}

        def unpublish():
            node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
                volume_id=args["volume_id"], target_path=args["target_path"]), timeout=30)
            return {}

        answer({"info": info, "publish": publish, "unpublish": unpublish}[call])
        """#

    public struct Answer: Sendable {
        public var ok: Bool
        public var code: String?
        public var details: String
        public var fields: [String: String]
    }

    public init(socket: String, root: String) throws {
        self.socket = socket
        self.root = root
        python = repositoryRoot() + "/.venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw TestFailure.message("the project venv is missing: run `make deps`")
        }
        folder = try TemporaryDirectory()
        let proto = repositoryRoot() + "/Sources/CSIPlugin"
        let generated = try run(
            [python, "-m", "grpc_tools.protoc", "-I", proto, "--python_out=\(folder.path)",
             "--grpc_python_out=\(folder.path)", proto + "/csi.proto"], timeout: 60)
        guard generated.status == 0 else {
            throw TestFailure.message(
                "generating the CSI stubs failed (grpcio-tools: `make deps`): \(generated.stderr)")
        }
        _ = try folder.write("kubelet.py", Self.script, mode: 0o644)
    }

    /// kubelet's target path of an inline volume: `<root>/pods/<pod uid>/volumes/kubernetes.io~csi/<name>/mount`.
    public func targetPath(podUID: String, volume: String) -> String {
        "\(root)/pods/\(podUID)/volumes/kubernetes.io~csi/\(volume)/mount"
    }

    public func call(_ name: String, _ arguments: [String: Any] = [:]) throws -> Answer {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: arguments), as: UTF8.self)
        let result = try run([python, folder.file("kubelet.py"), folder.path, socket, name, json], timeout: 60)
        guard result.status == 0, let line = result.stdoutText.split(separator: "\n").last,
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            throw TestFailure.message("the kubelet stand-in failed (\(result.status)): \(result.stderr.suffix(800))")
        }
        var fields: [String: String] = [:]
        for (key, value) in object { fields[key] = "\(value)" }
        return Answer(
            ok: object["ok"] as? Bool ?? false, code: object["code"] as? String,
            details: object["details"] as? String ?? "", fields: fields)
    }

    /// Waits until the plugin answers on its socket.
    public func waitUntilServing(seconds: Double = 30) throws {
        try waitUntil("the CSI plugin to answer on \(socket)", seconds: seconds, every: 0.2) {
            FileManager.default.fileExists(atPath: socket) && ((try? call("info"))?.ok ?? false)
        }
    }

    public func remove() { folder.remove() }
}

/// A Kubernetes pod as kubelet describes it to a CSI driver.
public struct TestPod: Sendable {
    public var uid: String
    public var name: String
    public var namespace: String
    public var serviceAccount: String

    public init(name: String, namespace: String, serviceAccount: String) {
        uid = UUID().uuidString.lowercased()
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    public var context: [String: String] {
        ["name": name, "namespace": namespace, "uid": uid, "service_account": serviceAccount]
    }

    /// The cgroup kubelet's cgroupfs driver gives a best-effort pod's containers.
    public var cgroupParent: String { "/kubepods/besteffort/pod\(uid)" }
}
