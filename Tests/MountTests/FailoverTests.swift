import Foundation
import Testing
import TestSupport

/// The mount outlives its worker: crash failover, live reload and supervisor re-exec, seen from a simulated
/// container (own mount namespace, a bind of one env folder, uid 65534).
@Suite("failover and reload", .serialized)
struct FailoverTests {
    func secrets(_ round: Int) -> String {
        "[default]\nPORT = 1234\n\n[production]\nPASSWORD = \"pw-\(round)\"\nDB_HOST = \"db-\(round)\"\n"
    }

    /// A config a container user can read through: allow_other, group 65534, group-readable files.
    func containerConfig(_ fixture: Fixture, extra: String = "") throws -> String {
        chmod(fixture.dir.path, 0o755)
        let config = try fixture.writeConfig(fresh: ["DB_*"], extra: extra)
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(
            of: "[mount]\n", with: "[mount]\nallow_other = true\nfile_mode = \"0440\"\ndir_mode = \"0555\"\ngid = 65534\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        return config
    }

    func requireContainerTools() throws {
        _ = try requireTool("unshare")
        _ = try requireTool("setpriv")
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") else {
            throw TestFailure.message("/usr/bin/python3 is missing (the container reader runs on it)")
        }
    }

    @Test("a worker SIGKILLed twice under a container's read loop: no failed read, and the next rotation is seen")
    func workerKilled() throws {
        try requireContainerTools()
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(
            config: try containerConfig(fixture, extra: "[metrics]\nlisten = \"unix:\(fixture.dir.file("metrics.sock"))\"\n"))
        let reader = try ContainerReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1", "db-2"], "PASSWORD": ["pw-1", "pw-2"]],
            seconds: 120)
        defer { reader.stop() }
        try reader.waitForReads()
        var killed: Set<pid_t> = []
        for round in 1...2 {
            let worker = try #require(fs.workerPID())
            killed.insert(worker)
            kill(worker, SIGKILL)
            try fs.waitForLog("a new worker serves the connection", count: round)
            try reader.waitForReads()  // the container reads through the new worker
        }
        #expect(fs.workerPID().map { !killed.contains($0) } == true)
        try fixture.writeEncrypted("secrets.toml.age", secrets(2))
        try reader.waitForValue("PASSWORD", index: 1)
        try reader.waitForValue("DB_HOST", index: 1)
        try reader.waitForReads()
        reader.stop()
        let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
        #expect(report.failures.isEmpty, "failed reads in the container: \(report.failures)")
        #expect(report.unexpected == 0)
        #expect(report.seen == ["DB_HOST": [0, 1], "PASSWORD": [0, 1]], "the rotation after the failovers")
        #expect(report.ok > 50)
        #expect(fs.log.contains("worker died; starting another on the same connection"))
        #expect(!fs.log.contains("pw-1") && !fs.log.contains("pw-2"))
        // The serving worker knows how many came before it (for /metrics and status).
        let status = try fixture.cli(["status", "--config", fixture.dir.file("config.toml")])
        #expect(status.stdoutText.contains("worker restarts: 2"), "\(status.stdoutText) \(status.stderr)")
    }

    @Test("a real container (podman + runc, uid 65534) reads through a worker SIGKILL, a reload and a re-exec")
    func podmanContainer() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(config: try containerConfig(fixture))
        let container = try PodmanReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"], "PORT": ["1234"]],
            seconds: 120)
        defer { container.stop() }
        try container.waitForReads()
        let worker = try #require(fs.workerPID())
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        try container.waitForReads()
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        try container.waitForReads()
        kill(fs.process.processIdentifier, SIGUSR2)
        try fs.waitForLog("supervisor re-executed; the worker keeps serving")
        try container.waitForReads()
        let report = try container.wait(timeout: 60, onTimeout: fs.abortConnection)
        #expect(report.failed == 0 && report.unexpected == 0, "\(report.failed) failed, \(report.unexpected) unexpected")
        #expect(report.ok >= 20)
        #expect(!fs.log.contains("pw-1"))
    }

    @Test("ten workers SIGKILLed 0.8 s apart under four container readers: every read answered, none slower than 3 s")
    func crashStorm() throws {
        try requireContainerTools()
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(
            config: try containerConfig(fixture, extra: "[metrics]\nlisten = \"unix:\(fixture.dir.file("metrics.sock"))\"\n"))
        let readers = try (0..<4).map { _ in
            try ContainerReader(
                source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"], "PORT": ["1234"]],
                seconds: 120)
        }
        defer { readers.forEach { $0.stop() } }
        for reader in readers { try reader.waitForReads() }
        // The fault schedule: a kill every 0.8 s, whether or not the last worker had served for long.
        var next = Date()
        for round in 1...10 {
            let worker = try #require(fs.workerPID())
            while Date() < next { usleep(10_000) }
            next = Date().addingTimeInterval(0.8)
            kill(worker, SIGKILL)
            try fs.waitForLog("a new worker serves the connection", count: round)
        }
        for reader in readers { try reader.waitForReads() }
        readers.forEach { $0.stop() }
        for reader in readers {
            let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
            #expect(report.failures.isEmpty, "failed reads in a container: \(report.failures)")
            #expect(report.unexpected == 0)
            #expect(report.longest_ms < 3000, "a read waited \(report.longest_ms) ms")
        }
        // No pause before any replacement: each of these workers had served.
        let deaths = fs.log.split(separator: "\n").filter { $0.contains("worker died; starting another") }
        #expect(deaths.count == 10)
        #expect(deaths.allSatisfy { $0.contains("in_seconds=0.0 ") && $0.contains("served=true") }, "\(deaths)")
        let status = try fixture.cli(["status", "--config", fixture.dir.file("config.toml")])
        #expect(status.stdoutText.contains("worker restarts: 10"), "\(status.stdoutText) \(status.stderr)")
    }

    @Test("reload (SIGHUP) under a read loop: no failed read, the new config serves; a bad config keeps the old worker")
    func reload() throws {
        try requireContainerTools()
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let config = try containerConfig(fixture)
        let fs = try fixture.mount(config: config)
        #expect(try fs.list("") == ["local"])
        let reader = try ContainerReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"], "PORT": ["1234"]],
            seconds: 120)
        defer { reader.stop() }
        try reader.waitForReads()
        let first = try #require(fs.workerPID())
        // A scope added to the config appears after the reload, from a new worker.
        let text = try String(contentsOfFile: config, encoding: .utf8)
        try (text + "\n[scopes.app]\nchain = [\"local\"]\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reloaded: the new worker serves")
        let second = try #require(fs.workerPID())
        #expect(second != first)
        #expect(try fs.list("") == ["app", "local"])
        #expect(try fs.readText("app/production/PASSWORD") == "pw-1")
        // A config that does not parse: refused, the running worker stays.
        try "[mount\npath = 1\n".write(toFile: config, atomically: true, encoding: .utf8)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("reload refused; the running worker keeps serving")
        #expect(fs.log.contains("config.toml:1"))
        // A config that parses but that a worker cannot start with (an unknown store type): the same.
        try (text + "\n[stores.broken]\ntype = \"nosuchtype\"\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(fs.process.processIdentifier, SIGHUP)
        try fs.waitForLog("the new worker failed before taking over; the running worker keeps serving")
        #expect(fs.workerPID() == second)
        #expect(try fs.readText("local/production/PASSWORD") == "pw-1")
        try reader.waitForReads()
        reader.stop()
        let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
        #expect(report.failures.isEmpty, "failed reads in the container: \(report.failures)")
        #expect(report.unexpected == 0 && report.ok > 50)
    }

    @Test("supervisor re-exec (SIGUSR2) under a read loop: same PID, the worker keeps serving, failover still works")
    func supervisorReexec() throws {
        try requireContainerTools()
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(config: try containerConfig(fixture))
        let reader = try ContainerReader(
            source: fs.path("local/production"), files: ["DB_HOST": ["db-1"], "PASSWORD": ["pw-1"]], seconds: 120)
        defer { reader.stop() }
        try reader.waitForReads()
        let worker = try #require(fs.workerPID())
        let supervisor = fs.process.processIdentifier
        kill(supervisor, SIGUSR2)
        try fs.waitForLog("supervisor re-executed; the worker keeps serving")
        let command = try String(contentsOfFile: "/proc/\(supervisor)/cmdline", encoding: .utf8)
        #expect(command.contains("--resume-state"), "the same PID runs the new image")
        #expect(fs.workerPID() == worker)
        kill(worker, SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        try reader.waitForReads()
        reader.stop()
        let report = try reader.wait(timeout: 40, onTimeout: fs.abortConnection)
        #expect(report.failures.isEmpty, "failed reads in the container: \(report.failures)")
        #expect(report.unexpected == 0 && report.ok > 50)
        // The re-executed supervisor still stops cleanly.
        #expect(fs.signal(SIGTERM) == 0)
        #expect(!MountedSecretsFS.isMounted(fixture.mountpoint))
    }

    @Test("one open, one value across a switch: an old handle whose value changed fails with ESTALE, a current one reads")
    func openHandleAcrossSwitch() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(config: try fixture.writeConfig())
        let path = fs.path("local/production/PASSWORD")
        let old = try withTimeout(10, onTimeout: fs.abortConnection) { open(path, O_RDONLY) }
        #expect(old >= 0)
        defer { close(old) }
        #expect(try readAt0(old, fs: fs) == "pw-1")
        try fixture.writeEncrypted("secrets.toml.age", secrets(2))
        #expect(try fs.readText("local/production/PASSWORD", until: "pw-2", within: 10) == "pw-2")
        let current = try withTimeout(10, onTimeout: fs.abortConnection) { open(path, O_RDONLY) }
        defer { close(current) }
        kill(try #require(fs.workerPID()), SIGKILL)
        try fs.waitForLog("a new worker serves the connection")
        // Drop the pages the kernel kept, so the reads reach the new worker.
        for fd in [old, current] { posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        try "1".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8)
        #expect(throws: FSError(code: ESTALE)) { try readAt0(old, fs: fs) }
        #expect(try readAt0(current, fs: fs) == "pw-2")
        #expect(try fs.readText("local/production/PASSWORD") == "pw-2")
    }

    @Test("a directory opened before a switch lists after it; known directories keep their inode numbers")
    func directoryAcrossSwitch() throws {
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let fs = try fixture.mount(config: try fixture.writeConfig())
        let before = try fs.status("local/production").st_ino
        let path = fs.path("local/production")
        let names = try withTimeout(20, onTimeout: fs.abortConnection) { () throws -> [String] in
            guard let dir = opendir(path) else { throw FSError(code: errno) }
            defer { closedir(dir) }
            kill(fs.workerPID() ?? 0, SIGKILL)
            try fs.waitForLog("a new worker serves the connection")
            var names: [String] = []
            while let entry = readdir(dir) {
                names.append(withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                })
            }
            return names.filter { $0 != "." && $0 != ".." }.sorted()
        }
        #expect(names == ["DB_HOST", "PASSWORD", "PORT"])
        #expect(try fs.status("local/production").st_ino == before)
    }

    @Test("a container started before the mount sees it once mounted (host folder rshared, container bind rslave)")
    func propagation() throws {
        try requireContainerTools()
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        try fixture.writeEncrypted("secrets.toml.age", secrets(1))
        let host = fixture.dir.file("host")
        let inside = fixture.dir.file("container")
        mkdir(host, 0o755)
        mkdir(inside, 0o755)
        #expect(try run(["mount", "--bind", host, host], timeout: 10).status == 0)
        defer { _ = try? run(["umount", "-l", host], timeout: 10) }
        #expect(try run(["mount", "--make-rshared", host], timeout: 10).status == 0)
        // The container: a slave copy of every mount (as Docker's root is), the host folder bound in rslave.
        let container = Process()
        container.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        let target = inside + "/secrets/local/production/PASSWORD"
        container.arguments = [
            "--mount", "--propagation", "unchanged", "/bin/sh", "-c",
            "mount --make-rslave / && mount --rbind \"$1\" \"$2\" && mount --make-rslave \"$2\" && echo bound && "
                + "for i in $(seq 200); do [ -e \"$3\" ] && exec cat \"$3\"; sleep 0.05; done; echo never-mounted",
            "container", host, inside, target,
        ]
        let output = Pipe()
        container.standardOutput = output
        container.standardInput = FileHandle.nullDevice
        try container.run()
        defer { if container.isRunning { kill(container.processIdentifier, SIGKILL) } }
        let bound = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        #expect(bound.hasPrefix("bound"))
        let config = try fixture.writeConfig()
        let text = try String(contentsOfFile: config, encoding: .utf8)
            .replacingOccurrences(of: "path = \"\(fixture.mountpoint)\"", with: "path = \"\(host)/secrets\"")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let fs = try MountedSecretsFS(
            binary: fixture.binary, config: config, mountpoint: host + "/secrets", logPath: fixture.dir.file("mount.log"))
        fixture.mounted = fs
        let deadline = Date().addingTimeInterval(20)
        while container.isRunning && Date() < deadline { usleep(20_000) }
        if container.isRunning { fs.abortConnection() }
        let seen = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(seen == "pw-1", "the container did not see the later mount")
        // The container's own binds did not leak back to the host.
        let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
        #expect(!mounts.contains(inside))
    }

    func readAt0(_ fd: Int32, fs: MountedSecretsFS) throws -> String {
        try withTimeout(10, onTimeout: fs.abortConnection) {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            guard count >= 0 else { throw FSError(code: errno) }
            return String(decoding: buffer[0..<count], as: UTF8.self)
        }
    }
}
