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
