import Foundation
import Locking

/// A real container (podman + runc) over a busybox root filesystem: one folder of the mount bound read-only at
/// /run/secrets, the process as uid 65534, no network. Its shell loop reads files until told to stop and reports
/// counts only, never the values it read.
public final class PodmanReader: @unchecked Sendable {
    public struct Report: Sendable {
        public var ok: Int
        public var failed: Int
        public var unexpected: Int
    }

    static let script = """
        ok=0; failed=0; unexpected=0; end=$(( $(date +%s) + $1 )); shift
        echo started
        while [ ! -e /run/control/stop ] && [ "$(date +%s)" -lt "$end" ]; do
            for spec in "$@"; do
                name=${spec%%=*}; allowed=${spec#*=}
                if value=$(cat "/run/secrets/$name" 2>/dev/null); then
                    case ",$allowed," in *",$value,"*) ok=$((ok + 1)) ;; *) unexpected=$((unexpected + 1)) ;; esac
                else
                    failed=$((failed + 1))
                fi
            done
            echo "ok $ok"
        done
        echo "done $ok $failed $unexpected"
        """

    public let process: Process
    let folder: TemporaryDirectory
    let lines = Locked<[String]>([])
    let ended = DispatchSemaphore(value: 0)

    /// The podman command and what it needs, or an error naming what is missing.
    public static func requireRuntime() throws -> (podman: String, busybox: String) {
        let podman = try requireTool("podman")
        _ = try requireTool("runc")
        let busybox = "/bin/busybox"
        guard FileManager.default.isExecutableFile(atPath: busybox) else {
            throw TestFailure.message("\(busybox) is missing (apt-get install busybox-static; `make deps` does)")
        }
        return (podman, busybox)
    }

    /// Starts the container: `source` (a folder of the mount) at /run/secrets; `files` maps a file name to the
    /// values it may hold (no commas in them). Returns once the container's loop runs.
    /// A busybox root filesystem in `folder` and a containers.conf for this machine; returns (rootfs, conf).
    static func prepare(_ folder: TemporaryDirectory, busybox: String) throws -> (String, String) {
        let rootfs = folder.file("rootfs")
        for dir in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
            try FileManager.default.createDirectory(atPath: rootfs + "/" + dir, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: busybox, toPath: rootfs + "/bin/busybox")
        for link in ["sh", "cat", "sleep", "date", "ls", "id", "stat"] {
            try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + link, withDestinationPath: "busybox")
        }
        // Podman's default ulimits exceed this machine's hard NOFILE limit; a project-local containers.conf drops them.
        let conf = try folder.write("containers.conf", "[containers]\ndefault_ulimits = []\n", mode: 0o644)
        return (rootfs, conf)
    }

    /// The options that place a container in a pod's cgroup, as kubelet's cgroupfs driver does.
    static func cgroupOptions(_ parent: String?) -> [String] {
        parent.map { ["--cgroup-manager", "cgroupfs", "--cgroup-parent", $0] } ?? []
    }

    /// Runs `script` once in a container (uid 65534, `source` at /run/secrets, in cgroup `cgroupParent`), with
    /// `groups` as supplementary groups; returns its status and output.
    public static func runOnce(
        source: String, script: String, cgroupParent: String? = nil, groups: [UInt32] = []
    ) throws -> ProcessResult {
        let (podman, busybox) = try requireRuntime()
        let folder = try TemporaryDirectory()
        defer { folder.remove() }
        let (rootfs, conf) = try prepare(folder, busybox: busybox)
        return try run(
            [podman, "run", "--rm", "--network", "none", "--user", "65534:65534"]
                + groups.flatMap { ["--group-add", "\($0)"] } + cgroupOptions(cgroupParent)
                + ["-v", "\(source):/run/secrets:ro", "--rootfs", rootfs, "/bin/sh", "-c", script],
            environment: ["CONTAINERS_CONF": conf], timeout: 120)
    }

    public init(source: String, files: [String: [String]], seconds: Int, cgroupParent: String? = nil) throws {
        let (podman, busybox) = try Self.requireRuntime()
        folder = try TemporaryDirectory()
        let (rootfs, conf) = try Self.prepare(folder, busybox: busybox)
        let control = folder.file("control")
        try FileManager.default.createDirectory(atPath: control, withIntermediateDirectories: true)
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: folder.file("reader.sh")))
        process = Process()
        process.executableURL = URL(fileURLWithPath: podman)
        process.arguments = [
            "run", "--rm", "--network", "none", "--user", "65534:65534",
        ] + Self.cgroupOptions(cgroupParent) + [
            "-v", "\(source):/run/secrets:ro", "-v", "\(control):/run/control:ro",
            "-v", "\(folder.file("reader.sh")):/reader.sh:ro",
            "--rootfs", rootfs, "/bin/sh", "/reader.sh", "\(seconds)",
        ] + files.keys.sorted().map { "\($0)=" + (files[$0] ?? []).joined(separator: ",") }
        process.environment = ["CONTAINERS_CONF": conf, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let started = DispatchSemaphore(value: 0)
        readLines(output.fileHandleForReading, line: { [self] line in
            lines.withLock { $0.append(line) }
            if line == "started" { started.signal() }
        }, ended: { [self] in
            started.signal()
            ended.signal()
        })
        _ = started.wait(timeout: .now() + 60)
        guard lines.withLock({ $0.contains("started") }) else {
            let said = lines.withLock { $0.joined(separator: "\n") }
            stop()
            throw TestFailure.message("the container did not start: \(said)")
        }
    }

    /// Good reads so far, from the loop's progress lines.
    var ok: Int {
        lines.withLock { $0.last { $0.hasPrefix("ok ") }.flatMap { Int($0.dropFirst(3)) } ?? 0 }
    }

    /// Waits until the container has made `count` more good reads.
    public func waitForReads(_ count: Int = 5, seconds: Double = 30) throws {
        let base = ok
        try waitUntil("\(count) more good reads in the podman container", seconds: seconds, every: 0.01) {
            ok >= base + count || !process.isRunning
        }
        guard ok >= base + count else { throw TestFailure.message("the podman container ended early") }
    }

    /// Tells the loop to end.
    public func stop() {
        _ = FileManager.default.createFile(atPath: folder.file("control") + "/stop", contents: nil)
    }

    /// Waits for the container to exit (killing it after `timeout`) and returns its counts.
    public func wait(timeout: Double, onTimeout: () -> Void) throws -> Report {
        defer { folder.remove() }
        stop()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            onTimeout()
            process.terminate()
            process.waitUntilExit()
            throw TestFailure.message("the podman container's reader hung")
        }
        _ = ended.wait(timeout: .now() + 10)
        let all = lines.withLock { $0 }
        guard let last = all.last(where: { $0.hasPrefix("done ") }) else {
            throw TestFailure.message("the podman container failed (status \(process.terminationStatus)): \(all.suffix(5))")
        }
        let numbers = last.split(separator: " ").dropFirst().compactMap { Int($0) }
        guard numbers.count == 3 else { throw TestFailure.message("unreadable report from the container: \(last)") }
        return Report(ok: numbers[0], failed: numbers[1], unexpected: numbers[2])
    }
}
