import Dispatch
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SecretsCore
import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#endif

/// The CSI node plugin ([csi]): Identity and Node (CSI v1) on a unix socket, for inline ephemeral volumes.
/// NodePublishVolume checks the volume's attributes, publishes a per-pod view of `<store or scope>/<env>` in the
/// core (`FileSystemCore.publish`) and bind-mounts it read-only at kubelet's target path, so the pod's mount holds
/// this mount's FUSE connection: worker crashes and reloads stay invisible to it.
public enum CSIPlugin {
    /// Serves `config.socket` from now on. `ready` answers Probe.
    public static func start(
        core: FileSystemCore, config: CSIConfig, mountPath: String, version: String,
        ready: @escaping @Sendable () -> Bool, logger: Logger
    ) {
        let nodeID = config.nodeID ?? Self.environment("KUBE_NODE_NAME") ?? Self.hostName()
        let mounts = VolumeMounts(mountPath: mountPath, logger: logger)
        let identity = IdentityService(driver: config.driver, version: version, ready: ready)
        let node = NodeService(core: core, mounts: mounts, nodeID: nodeID, logger: logger)
        let socket = config.socket
        Listener.start("CSI node plugin", logger: logger) {
            unlink(socket)
            let transport = HTTP2ServerTransport.Posix(
                address: .unixDomainSocket(path: socket), transportSecurity: .plaintext)
            let server = GRPCServer(transport: transport, services: [identity, node])
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { try await server.serve() }
                // Only root (kubelet, the registrar) may dial the socket.
                _ = try await transport.listeningAddress
                chmod(socket, 0o600)
            }
        }
        logger.info(
            "CSI node plugin", metadata: ["socket": "\(socket)", "driver": "\(config.driver)", "node": "\(nodeID)"])
    }

    static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A blocking body (store calls, mount syscalls, which re-enter this FUSE mount) off the cooperative pool.
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws(RPCError) -> T) async throws(RPCError) -> T {
        let result: Result<T, RPCError> = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                do throws(RPCError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }
}

struct IdentityService: Csi_V1_Identity.ServiceProtocol {
    let driver: String
    let version: String
    let ready: @Sendable () -> Bool

    func getPluginInfo(
        request: ServerRequest<Csi_V1_GetPluginInfoRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_GetPluginInfoResponse> {
        var response = Csi_V1_GetPluginInfoResponse()
        response.name = driver
        response.vendorVersion = version
        return ServerResponse(message: response)
    }

    func getPluginCapabilities(
        request: ServerRequest<Csi_V1_GetPluginCapabilitiesRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_GetPluginCapabilitiesResponse> {
        // A node-only plugin: no controller service, no topology.
        ServerResponse(message: Csi_V1_GetPluginCapabilitiesResponse())
    }

    func probe(
        request: ServerRequest<Csi_V1_ProbeRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_ProbeResponse> {
        var response = Csi_V1_ProbeResponse()
        response.ready = Google_Protobuf_BoolValue(ready())
        return ServerResponse(message: response)
    }
}

struct NodeService: Csi_V1_Node.ServiceProtocol {
    let core: FileSystemCore
    let mounts: VolumeMounts
    let nodeID: String
    let logger: Logger

    func nodeGetInfo(
        request: ServerRequest<Csi_V1_NodeGetInfoRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_NodeGetInfoResponse> {
        var response = Csi_V1_NodeGetInfoResponse()
        response.nodeID = nodeID
        return ServerResponse(message: response)
    }

    func nodeGetCapabilities(
        request: ServerRequest<Csi_V1_NodeGetCapabilitiesRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_NodeGetCapabilitiesResponse> {
        // VOLUME_MOUNT_GROUP: kubelet passes the pod's fsGroup as volume_mount_group and does not chown the volume.
        var capability = Csi_V1_NodeServiceCapability()
        var rpc = Csi_V1_NodeServiceCapability.RPC()
        rpc.type = .volumeMountGroup
        capability.rpc = rpc
        var response = Csi_V1_NodeGetCapabilitiesResponse()
        response.capabilities = [capability]
        return ServerResponse(message: response)
    }

    func nodePublishVolume(
        request: ServerRequest<Csi_V1_NodePublishVolumeRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_NodePublishVolumeResponse> {
        let volume = try PublishRequest.volume(request.message)
        let (core, mounts, logger) = (core, mounts, logger)
        try await CSIPlugin.offload { () throws(RPCError) in
            let source: String
            do throws(FileSystemCore.VolumeRefusal) {
                source = try core.publish(volume)
            } catch {
                throw RPCError(code: .invalidArgument, message: "volume attribute '\(error.attribute)': \(error.message)")
            }
            do throws(VolumeMounts.MountError) {
                try mounts.bind(source, at: volume.targetPath)
            } catch {
                // Nothing half-published stays behind.
                if !mounts.isMounted(volume.targetPath) { core.unpublish(volume.id) }
                throw RPCError(code: .internalError, message: "\(error)")
            }
            logger.info(
                "CSI volume published",
                metadata: [
                    "volume": "\(volume.id)", "path": "\(volume.top)/\(volume.env)", "target": "\(volume.targetPath)",
                    "pod": "\(volume.pod.namespace)/\(volume.pod.name)", "service_account": "\(volume.pod.serviceAccount)",
                ])
        }
        return ServerResponse(message: Csi_V1_NodePublishVolumeResponse())
    }

    func nodeUnpublishVolume(
        request: ServerRequest<Csi_V1_NodeUnpublishVolumeRequest>, context: ServerContext
    ) async throws -> ServerResponse<Csi_V1_NodeUnpublishVolumeResponse> {
        let message = request.message
        guard !message.volumeID.isEmpty else { throw RPCError(code: .invalidArgument, message: "volume_id is empty") }
        guard message.targetPath.hasPrefix("/") else {
            throw RPCError(code: .invalidArgument, message: "target_path must be an absolute path")
        }
        let (core, mounts, logger) = (core, mounts, logger)
        try await CSIPlugin.offload { () throws(RPCError) in
            do throws(VolumeMounts.MountError) {
                try mounts.unbind(message.targetPath)
            } catch {
                throw RPCError(code: .internalError, message: "\(error)")
            }
            // The view goes once no target of it is mounted (kubelet gives an inline volume one target).
            if let volume = core.volumes[message.volumeID], volume.targetPath == message.targetPath {
                core.unpublish(message.volumeID)
                logger.info("CSI volume unpublished", metadata: ["volume": "\(message.volumeID)"])
            }
        }
        return ServerResponse(message: Csi_V1_NodeUnpublishVolumeResponse())
    }
}

/// The volume a NodePublishVolume asks for, or INVALID_ARGUMENT naming the field or attribute at fault.
enum PublishRequest {
    static let podName = "csi.storage.k8s.io/pod.name"
    static let podNamespace = "csi.storage.k8s.io/pod.namespace"
    static let podUID = "csi.storage.k8s.io/pod.uid"
    static let serviceAccount = "csi.storage.k8s.io/serviceAccount.name"
    static let ephemeral = "csi.storage.k8s.io/ephemeral"
    /// Keys kubelet may add that this plugin does not use.
    static let ignored: Set<String> = ["csi.storage.k8s.io/serviceAccount.tokens"]

    static func volume(_ message: Csi_V1_NodePublishVolumeRequest) throws(RPCError) -> CSIVolume {
        func refuse(_ text: String) -> RPCError { RPCError(code: .invalidArgument, message: text) }
        guard !message.volumeID.isEmpty else { throw refuse("volume_id is empty") }
        guard EntryName.isValid(message.volumeID), !message.volumeID.hasPrefix(".") else {
            throw refuse("volume_id '\(message.volumeID)' is not a usable name")
        }
        guard message.targetPath.hasPrefix("/"), !message.targetPath.split(separator: "/").contains("..") else {
            throw refuse("target_path must be an absolute path without '..'")
        }
        guard message.readonly else {
            throw refuse("readonly: secretsfs volumes are read-only; set readOnly: true on the pod's csi volume")
        }
        guard message.hasVolumeCapability else { throw refuse("volume_capability is missing") }
        let capability = message.volumeCapability
        guard case .mount(let mount)? = capability.accessType else {
            throw refuse("volume_capability: only mount volumes are served, not block volumes")
        }
        switch capability.accessMode.mode {
        case .singleNodeReaderOnly, .multiNodeReaderOnly, .singleNodeWriter, .singleNodeSingleWriter,
            .singleNodeMultiWriter, .unknown:
            break
        default:
            throw refuse("volume_capability.access_mode: \(capability.accessMode.mode) is not a single-node mode")
        }
        var group: UInt32?
        if !mount.volumeMountGroup.isEmpty {
            guard let gid = UInt32(mount.volumeMountGroup) else {
                throw refuse("volume_capability.mount.volume_mount_group '\(mount.volumeMountGroup)' is not a group id")
            }
            group = gid
        }
        let context = message.volumeContext
        for key in context.keys.sorted() where key != "path" && key != "keys" && !ignored.contains(key) {
            guard [podName, podNamespace, podUID, serviceAccount, ephemeral].contains(key) else {
                throw refuse("volume attribute '\(key)' is unknown (secretsfs takes path and keys)")
            }
        }
        guard context[ephemeral] == "true" else {
            throw refuse("volume attribute '\(ephemeral)': only inline ephemeral volumes are served (a pod's csi volume)")
        }
        guard let path = context["path"], !path.isEmpty else {
            throw refuse("volume attribute 'path' is missing: give <store or scope>/<env>, such as billing/production")
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, parts.allSatisfy(EntryName.isValid) else {
            throw refuse("volume attribute 'path': '\(path)' is not <store or scope>/<env>")
        }
        let keys = (context["keys"] ?? "").split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        for pattern in keys where pattern.contains("/") {
            throw refuse("volume attribute 'keys': '\(pattern)' is not a key glob")
        }
        for key in [podUID, podName, podNamespace, serviceAccount] where (context[key] ?? "").isEmpty {
            throw refuse(
                "volume attribute '\(key)' is missing: the CSIDriver object needs podInfoOnMount: true (a view serves one pod)")
        }
        let uid = context[podUID] ?? ""
        guard PodIdentity.isUID(uid) else { throw refuse("volume attribute '\(podUID)': '\(uid)' is not a pod uid") }
        let pod = PodIdentity(
            uid: uid.lowercased(), name: context[podName] ?? "", namespace: context[podNamespace] ?? "",
            serviceAccount: context[serviceAccount] ?? "")
        return CSIVolume(
            id: message.volumeID, top: parts[0], env: parts[1].lowercased(), keys: keys, pod: pod, group: group,
            targetPath: message.targetPath)
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
