import Foundation
import Testing
import TestSupport
import Yams

/// No cluster and no Docker engine run in CI: these tests parse the deployment files and check the fields that
/// make a FUSE mount reach other pods and survive its daemon.
@Suite("deployment files")
struct DeployTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    func documents(_ relative: String) throws -> [[String: Any]] {
        let text = try String(contentsOf: Self.root.appendingPathComponent(relative), encoding: .utf8)
        return try Yams.load_all(yaml: text).compactMap { $0 as? [String: Any] }
    }

    func value(_ object: Any?, _ path: String...) -> Any? {
        var current = object
        for key in path {
            if let index = Int(key), let list = current as? [Any] {
                current = index < list.count ? list[index] : nil
            } else {
                current = (current as? [String: Any])?[key]
            }
        }
        return current
    }

    @Test("the DaemonSet: privileged, /dev/fuse, hostPath with Bidirectional propagation, readiness from the mount")
    func daemonSet() throws {
        let all = try documents("deploy/kubernetes/daemonset.yaml")
        let set = try #require(all.first { $0["kind"] as? String == "DaemonSet" })
        let pod = try #require(value(set, "spec", "template", "spec") as? [String: Any])
        let container = try #require(value(pod, "containers", "0") as? [String: Any])
        #expect(value(container, "securityContext", "privileged") as? Bool == true)
        #expect((container["args"] as? [String])?.prefix(1) == ["mount"])
        // No liveness probe: a killed supervisor would unmount every pod's volume.
        #expect(container["livenessProbe"] == nil)
        let volumes = try #require(pod["volumes"] as? [[String: Any]])
        let mounts = try #require(container["volumeMounts"] as? [[String: Any]])
        func volume(mountedAt path: String) -> [String: Any]? {
            guard let name = mounts.first(where: { $0["mountPath"] as? String == path })?["name"] as? String else {
                return nil
            }
            return volumes.first { $0["name"] as? String == name }
        }
        #expect(value(volume(mountedAt: "/dev/fuse"), "hostPath", "path") as? String == "/dev/fuse")
        #expect(value(volume(mountedAt: "/dev/fuse"), "hostPath", "type") as? String == "CharDevice")
        let secrets = try #require(mounts.first { $0["mountPath"] as? String == "/secrets" })
        #expect(secrets["mountPropagation"] as? String == "Bidirectional")
        #expect(value(volume(mountedAt: "/secrets"), "hostPath", "path") as? String == "/run/secretsfs")
        let probe = try #require(value(container, "readinessProbe", "exec", "command") as? [String])
        #expect(probe.joined(separator: " ").contains("fuse.secretsfs"))
        #expect(value(volume(mountedAt: "/etc/secretsfs"), "secret", "secretName") as? String != nil)
    }

    @Test("the DaemonSet for CSI: hostPID, surge upgrades that take over, the registrar, kubelet's directory shared")
    func csiDaemonSet() throws {
        let all = try documents("deploy/kubernetes/daemonset.yaml")
        let set = try #require(all.first { $0["kind"] as? String == "DaemonSet" })
        #expect(value(set, "spec", "updateStrategy", "type") as? String == "RollingUpdate")
        #expect(value(set, "spec", "updateStrategy", "rollingUpdate", "maxSurge") as? Int == 1)
        #expect(value(set, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable") as? Int == 0)
        let pod = try #require(value(set, "spec", "template", "spec") as? [String: Any])
        #expect(pod["hostPID"] as? Bool == true)
        let containers = try #require(pod["containers"] as? [[String: Any]])
        let volumes = try #require(pod["volumes"] as? [[String: Any]])
        func hostPath(_ container: [String: Any], at path: String) -> String? {
            let mounts = container["volumeMounts"] as? [[String: Any]] ?? []
            guard let name = mounts.first(where: { $0["mountPath"] as? String == path })?["name"] as? String else { return nil }
            return value(volumes.first { $0["name"] as? String == name }, "hostPath", "path") as? String
        }
        let daemon = containers[0]
        #expect((daemon["args"] as? [String])?.suffix(2) == ["--after-handover", "wait"])
        #expect(hostPath(daemon, at: "/var/lib/kubelet") == "/var/lib/kubelet")
        let kubelet = (daemon["volumeMounts"] as? [[String: Any]])?.first { $0["mountPath"] as? String == "/var/lib/kubelet" }
        #expect(kubelet?["mountPropagation"] as? String == "Bidirectional")
        #expect(hostPath(daemon, at: "/csi") == "/var/lib/kubelet/plugins/csi.secretsfs.dev")
        #expect(hostPath(daemon, at: "/run/secretsfs-takeover") == "/run/secretsfs-takeover")
        let registrar = try #require(containers.first { $0["name"] as? String == "node-driver-registrar" })
        let arguments = registrar["args"] as? [String] ?? []
        #expect(arguments.contains("--csi-address=/csi/csi.sock"))
        #expect(arguments.contains("--kubelet-registration-path=/var/lib/kubelet/plugins/csi.secretsfs.dev/csi.sock"))
        #expect(hostPath(registrar, at: "/csi") == "/var/lib/kubelet/plugins/csi.secretsfs.dev")
        #expect(hostPath(registrar, at: "/registration") == "/var/lib/kubelet/plugins_registry")
        // The example config serves the plugin on the socket the registrar dials and listens for takeovers in the
        // shared directory.
        let secret = try #require(all.first { $0["kind"] as? String == "Secret" })
        let config = try #require(value(secret, "stringData", "config.toml") as? String)
        #expect(config.contains("socket = \"/csi/csi.sock\"") && config.contains("driver = \"csi.secretsfs.dev\""))
        #expect(config.contains("takeover_socket = \"/run/secretsfs-takeover/takeover.sock\""))
    }

    @Test("the CSIDriver: no attach, pod info on mount, ephemeral volumes only, fsGroup handed to the driver")
    func csiDriver() throws {
        let driver = try #require(try documents("deploy/kubernetes/csi-driver.yaml").first)
        #expect(driver["kind"] as? String == "CSIDriver" && value(driver, "metadata", "name") as? String == "csi.secretsfs.dev")
        #expect(value(driver, "spec", "attachRequired") as? Bool == false)
        #expect(value(driver, "spec", "podInfoOnMount") as? Bool == true)
        #expect(value(driver, "spec", "volumeLifecycleModes") as? [String] == ["Ephemeral"])
        #expect(value(driver, "spec", "fsGroupPolicy") as? String == "File")
    }

    /// What Pod Security's restricted profile (v1.30 and later) would refuse in `pod`; empty when it passes.
    func restrictedViolations(_ pod: [String: Any]) -> [String] {
        var found: [String] = []
        let spec = pod["spec"] as? [String: Any] ?? [:]
        for key in ["hostNetwork", "hostPID", "hostIPC"] where spec[key] as? Bool == true { found.append(key) }
        let allowedVolumes: Set<String> = [
            "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
        ]
        for volume in spec["volumes"] as? [[String: Any]] ?? [] {
            for key in volume.keys where key != "name" && !allowedVolumes.contains(key) { found.append("volume type \(key)") }
        }
        let podContext = spec["securityContext"] as? [String: Any] ?? [:]
        let containers = (spec["containers"] as? [[String: Any]] ?? []) + (spec["initContainers"] as? [[String: Any]] ?? [])
        for container in containers {
            let name = container["name"] as? String ?? "?"
            let context = container["securityContext"] as? [String: Any] ?? [:]
            if context["privileged"] as? Bool == true { found.append("\(name): privileged") }
            if context["allowPrivilegeEscalation"] as? Bool != false { found.append("\(name): allowPrivilegeEscalation") }
            let drop = value(context, "capabilities", "drop") as? [String] ?? []
            if !drop.contains("ALL") { found.append("\(name): capabilities not dropped") }
            let add = value(context, "capabilities", "add") as? [String] ?? []
            if add.contains(where: { $0 != "NET_BIND_SERVICE" }) { found.append("\(name): capabilities added") }
            let nonRoot = context["runAsNonRoot"] as? Bool ?? podContext["runAsNonRoot"] as? Bool
            if nonRoot != true { found.append("\(name): runAsNonRoot") }
            if (context["runAsUser"] as? Int ?? podContext["runAsUser"] as? Int) == 0 { found.append("\(name): runAsUser 0") }
            let seccomp = value(context, "seccompProfile", "type") as? String ?? value(podContext, "seccompProfile", "type") as? String
            if seccomp != "RuntimeDefault" && seccomp != "Localhost" { found.append("\(name): seccompProfile") }
            for mount in container["volumeMounts"] as? [[String: Any]] ?? [] where mount["mountPropagation"] != nil {
                found.append("\(name): mountPropagation")
            }
        }
        return found
    }

    @Test("the CSI consumer passes the restricted profile and reads /run/secrets/DB_PASS; the hostPath one does not")
    func csiConsumer() throws {
        let all = try documents("deploy/kubernetes/csi-consumer-pod.yaml")
        let pod = try #require(all.first { $0["kind"] as? String == "Pod" })
        #expect(restrictedViolations(pod).isEmpty, "\(restrictedViolations(pod))")
        let csi = try #require(value(pod, "spec", "volumes", "0", "csi") as? [String: Any])
        #expect(csi["driver"] as? String == "csi.secretsfs.dev" && csi["readOnly"] as? Bool == true)
        #expect(value(csi, "volumeAttributes", "path") as? String == "billing/production")
        #expect(value(pod, "spec", "containers", "0", "volumeMounts", "0", "mountPath") as? String == "/run/secrets")
        #expect((value(pod, "spec", "containers", "0", "command") as? [String])?.joined().contains("/run/secrets/DB_PASS") == true)
        #expect(value(pod, "spec", "serviceAccountName") as? String == "api")
        // The check itself refuses what restricted refuses: the hostPath consumer.
        let hostPathPod = try #require(try documents("deploy/kubernetes/consumer-pod.yaml").first)
        #expect(restrictedViolations(hostPathPod).contains("volume type hostPath"))
    }

    @Test("the consumer: non-root, read-only, HostToContainer on the node folder the DaemonSet mounts into")
    func consumer() throws {
        let pod = try #require(try documents("deploy/kubernetes/consumer-pod.yaml").first)
        #expect(pod["kind"] as? String == "Pod")
        #expect(value(pod, "spec", "securityContext", "runAsUser") as? Int == 65534)
        let mount = try #require(value(pod, "spec", "containers", "0", "volumeMounts", "0") as? [String: Any])
        #expect(mount["mountPropagation"] as? String == "HostToContainer")
        #expect(mount["readOnly"] as? Bool == true)
        #expect(value(pod, "spec", "volumes", "0", "hostPath", "path") as? String == "/run/secretsfs")
    }

    @Test("the Dockerfile builds the release binary on the Swift image and runs it on slim Debian with fuse3, libcurl")
    func dockerfile() throws {
        let text = try String(
            contentsOf: Self.root.appendingPathComponent("deploy/docker/Dockerfile"), encoding: .utf8)
        let from = text.split(separator: "\n").filter { $0.hasPrefix("FROM ") }
        #expect(from.count == 2)
        #expect(from.first?.contains("swift:") == true && from.last?.contains("debian:bookworm-slim") == true)
        #expect(text.contains("swift build -c release --product secretsfs"))
        #expect(text.contains("fuse3") && text.contains("libcurl4"))
        #expect(text.contains("ENTRYPOINT [\"/usr/local/bin/secretsfs\"]"))
    }

    @Test("the systemd unit reloads in place, reports readiness, passes systemd-analyze verify and scores <= 4.0")
    func systemdUnit() throws {
        let analyze = try requireTool("systemd-analyze")
        let text = try String(
            contentsOf: Self.root.appendingPathComponent("systemd/secretsfs.service"), encoding: .utf8)
        let lines = Set(text.split(separator: "\n").map(String.init))
        #expect(lines.contains("Type=notify"))
        #expect(lines.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        #expect(lines.contains("LimitCORE=0"))
        #expect(lines.contains("MountFlags=shared"), "the mount must reach the host from the unit's namespace")
        // verify checks the binaries exist: point the unit at the one just built.
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let unit = try folder.write(
            "secretsfs.service", text.replacingOccurrences(of: "/usr/local/bin/secretsfs", with: try secretsfsBinary()))
        let verify = try run([analyze, "verify", unit], timeout: 60)
        #expect(verify.status == 0, "systemd-analyze verify: \(verify.stderr)")
        let security = try run([analyze, "security", "--offline=true", unit], timeout: 60)
        let overall = (security.stdoutText + security.stderr).split(separator: "\n")
            .first { $0.contains("Overall exposure level") }
        let score = overall.flatMap { line in
            line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) }
        }
        #expect(score != nil && score! <= 4.0, "exposure: \(overall ?? "none")")
    }
}
