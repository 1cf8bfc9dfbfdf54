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
        guard let (server, port, connection) = RedisBench.startServer(root: root) else {
            print("notices: redis-server is not installed (make deps) or did not start; skipped")
            return
        }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        let keys = 10_000
        var batch: [String] = ["HSET", "DYNACONF_PRODUCTION"]
        for index in 0..<keys { batch += ["KEY_\(index)", "value-\(index)"] }
        _ = try? connection.command(batch.map { Array($0.utf8) })
        _ = try? connection.command("HSET", "DYNACONF_STAGING", "OTHER", "0")

        _ = try? connection.command("HSET", "DYNACONF_PRODUCTION", "PASSWORD", "ready")
        let storeKeys = "url = \"redis://127.0.0.1:\(port)/0\"\ntimeout = \"5s\""
        FreshBench.withMount(binary: binary, root: root, name: "redis", storeKeys: storeKeys) { path, daemon in
            measure(
                directory: String(path.dropLast("/PASSWORD".count)), daemon: daemon, connection: connection,
                seconds: seconds, keys: keys)
        }
    }

    /// The HSET loops against a mounted env of `keys` cached names.
    static func measure(directory: String, daemon: Int32, connection: RedisConnection, seconds: Double, keys: Int) {
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
            let cpuBefore = cpuSeconds(daemon)
            let commandsBefore = processedCommands(connection)
            let begin = nanoseconds()
            for index in 0..<writes {
                _ = try? connection.command("HSET", hash, "KEY_1", "changed-\(index)")
                let due = begin + UInt64(index + 1) * 10_000_000
                let now = nanoseconds()
                if due > now { usleep(useconds_t((due - now) / 1000)) }
            }
            usleep(1_000_000)  // let the last notices be handled
            let cpu = cpuSeconds(daemon) - cpuBefore
            // Ours: the HSETs and the two INFO calls.
            let daemonCommands = processedCommands(connection) - commandsBefore - writes - 1
            print("  \(label.padding(toLength: 26, withPad: " ", startingAt: 0)) daemon CPU \(fmt(cpu * 1000 / Double(writes), 2).leftPad(7)) ms/HSET, \(fmt(Double(daemonCommands) / Double(writes), 1).leftPad(7)) Redis commands/HSET")
        }
    }
}
