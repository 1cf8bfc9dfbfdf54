import Foundation
import RedisClient

/// Change notices at scale: 10,000 cached keys in one Redis env, then 100 HSETs a second for 10 s, first to
/// another env, then to the env the keys are in. Prints the daemon's CPU time (supervisor and worker) and the
/// commands it sent to Redis per HSET, so a binary from before and after a change can be compared.
enum NoticeBench {
    static func cpuSeconds(_ pid: Int32) -> Double {
        var total = 0.0
        var pids = [pid]
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        pids += children.split(separator: " ").compactMap { Int32($0) }
        for process in pids {
            guard let stat = try? String(contentsOfFile: "/proc/\(process)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // utime and stime are fields 14 and 15 of /proc/pid/stat; after the command they are 12th and 13th.
            if fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) {
                total += (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
            }
        }
        return total
    }

    static func processedCommands(_ connection: RedisConnection) -> Int {
        guard case .bulk(let raw?)? = try? connection.command("INFO", "stats") else { return 0 }
        let text = String(decoding: raw, as: UTF8.self)
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("total_commands_processed:") {
            return Int(line.split(separator: ":")[1]) ?? 0
        }
        return 0
    }

    static func run(binary: String, root: String, seconds: Double) {
        guard let serverPath = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: {
            FileManager.default.isExecutableFile(atPath: $0)
        }), let port = RedisBench.freePort() else {
            print("notices: redis-server is not installed (make deps); skipped")
            return
        }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: serverPath)
        server.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                            "--notify-keyspace-events", "Kh", "--dir", root]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        guard (try? server.run()) != nil else { return }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let settings = RedisSettings(endpoint: RedisEndpoint(address: .tcp(host: "127.0.0.1", port: port)), timeout: 5)
        var connection: RedisConnection?
        for _ in 0..<500 where connection == nil {
            connection = try? RedisConnection(settings)
            if connection == nil { usleep(10_000) }
        }
        guard let connection else { return }
        let keys = 10_000
        var batch: [String] = ["HSET", "DYNACONF_PRODUCTION"]
        for index in 0..<keys { batch += ["KEY_\(index)", "value-\(index)"] }
        _ = try? connection.command(batch.map { Array($0.utf8) })
        _ = try? connection.command("HSET", "DYNACONF_STAGING", "OTHER", "0")

        let mountpoint = root + "/mnt-notices"
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let config = root + "/notices.toml"
        try? """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            [stores.redis]
            type = "redis"
            url = "redis://127.0.0.1:\(port)/0"
            timeout = "5s"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: binary)
        daemon.arguments = ["mount", "--config", config, "--log-level", "warning"]
        daemon.standardInput = FileHandle.nullDevice
        guard (try? daemon.run()) != nil else { return }
        defer {
            daemon.terminate()
            daemon.waitUntilExit()
            if isMounted(mountpoint) { shell(["/usr/bin/fusermount3", "-u", "-z", mountpoint]) }
        }
        let directory = mountpoint + "/redis/production"
        for _ in 0..<1000 where access(directory + "/KEY_0", R_OK) != 0 { usleep(10_000) }
        // Every key looked up once: 10,000 cached names the kernel holds.
        var buffer = [UInt8](repeating: 0, count: 64)
        for index in 0..<keys {
            let fd = open(directory + "/KEY_\(index)", O_RDONLY)
            if fd >= 0 {
                _ = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                close(fd)
            }
        }
        usleep(500_000)
        print("change notices (10,000 cached keys in one Redis env, 100 HSETs/s for \(fmt(seconds * 5, 0)) s):")
        for (label, hash) in [("HSETs to another env", "DYNACONF_STAGING"), ("HSETs to the cached env", "DYNACONF_PRODUCTION")] {
            let writes = Int(seconds * 5 * 100)
            let cpuBefore = cpuSeconds(daemon.processIdentifier)
            let commandsBefore = processedCommands(connection)
            let begin = nanoseconds()
            for index in 0..<writes {
                _ = try? connection.command("HSET", hash, "KEY_1", "changed-\(index)")
                let due = begin + UInt64(index + 1) * 10_000_000
                let now = nanoseconds()
                if due > now { usleep(useconds_t((due - now) / 1000)) }
            }
            usleep(1_000_000)  // let the last notices be handled
            let cpu = cpuSeconds(daemon.processIdentifier) - cpuBefore
            // Ours: the HSETs and the two INFO calls.
            let daemonCommands = processedCommands(connection) - commandsBefore - writes - 1
            print("  \(label.padding(toLength: 26, withPad: " ", startingAt: 0)) daemon CPU \(fmt(cpu * 1000 / Double(writes), 2).leftPad(7)) ms/HSET, \(fmt(Double(daemonCommands) / Double(writes), 1).leftPad(7)) Redis commands/HSET")
        }
    }
}
