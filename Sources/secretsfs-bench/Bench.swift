// make bench: secretsfs against tmpfs, measured in one run. Prints ops/s, p50/p99 and ratios.
// Usage: secretsfs-bench <path to secretsfs binary> [seconds per measurement] [python with dynaconf]
import Foundation


struct Measurement {
    var label: String
    var opsPerSecond: Double
    var p50: Double  // microseconds
    var p99: Double
}

@Sendable func nanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Latencies of one thread, kept apart so threads never share a cache line while measuring.
final class Samples: @unchecked Sendable {
    var values: [UInt64] = []
    var failures = 0
}

/// open/read/close of `path` in a loop on `threads` threads for `duration` seconds.
func measure(_ label: String, path: String, threads: Int, duration: Double) -> Measurement {
    let (samples, elapsed) = measureSamples(label, path: path, threads: threads, duration: duration)
    return summarize(label, samples, elapsed: elapsed)
}

/// Per-operation latencies (nanoseconds) and ops/s, p50 and p99 of them.
func summarize(_ label: String, _ samples: [UInt64], elapsed: Double) -> Measurement {
    let all = samples.sorted()
    func percentile(_ p: Double) -> Double {
        all.isEmpty ? 0 : Double(all[min(all.count - 1, Int(Double(all.count) * p))]) / 1000
    }
    return Measurement(label: label, opsPerSecond: Double(all.count) / elapsed, p50: percentile(0.5), p99: percentile(0.99))
}

/// The latencies of an open/read/close loop and the time it ran.
func measureSamples(_ label: String, path: String, threads: Int, duration: Double) -> ([UInt64], Double) {
    let perThread = (0..<threads).map { _ in Samples() }
    let start = DispatchSemaphore(value: 0)
    let done = DispatchGroup()
    let deadline = Mutexless(value: 0)
    for index in 0..<threads {
        done.enter()
        let samples = perThread[index]
        samples.values.reserveCapacity(4_000_000)
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            start.wait()
            let end = deadline.value
            while true {
                let begin = nanoseconds()
                if begin >= end { break }
                let fd = open(path, O_RDONLY)
                if fd < 0 {
                    samples.failures += 1
                    continue
                }
                _ = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                close(fd)
                samples.values.append(nanoseconds() - begin)
            }
            done.leave()
        }
        thread.start()
    }
    let begin = nanoseconds()
    deadline.value = begin + UInt64(duration * 1e9)
    for _ in 0..<threads { start.signal() }
    done.wait()
    let elapsed = Double(nanoseconds() - begin) / 1e9
    let failures = perThread.map(\.failures).reduce(0, +)
    if failures > 0 { print("  (\(label): \(failures) failed opens)") }
    return (perThread.flatMap(\.values), elapsed)
}

/// A value written before the threads are released and only read after: no lock needed.
final class Mutexless: @unchecked Sendable {
    var value: UInt64
    init(value: UInt64) { self.value = value }
}

@discardableResult
func shell(_ argv: [String], input: String? = nil) -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: argv[0])
    process.arguments = Array(argv.dropFirst())
    let out = Pipe()
    let inPipe = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.standardError
    process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    do { try process.run() } catch { return (-1, "") }
    if let input {
        inPipe.fileHandleForWriting.write(Data(input.utf8))
        try? inPipe.fileHandleForWriting.close()
    }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

func isMounted(_ path: String) -> Bool {
    ((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains(" \(path) ")
}

func rssKiB(_ pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

func fmt(_ value: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", value) }

extension String {
    func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}

struct Mounted {
    var process: Process
    var mountpoint: String
    var readySeconds: Double
}

@main
struct Bench {
    static func main() throws {
        let arguments = CommandLine.arguments
        guard arguments.count >= 2 else {
            print("usage: secretsfs-bench <secretsfs binary> [seconds per measurement]")
            exit(2)
        }
        let binary = arguments[1]
        let seconds = arguments.count > 2 ? Double(arguments[2]) ?? 2 : 2
        // BENCH_ONLY=local|failover|audit|redis|vault|notices|dapr|ha|outage|rendered|sops|csi|leases runs one part (for working on one store); unset runs everything.
        let only = ProcessInfo.processInfo.environment["BENCH_ONLY"]
        func wanted(_ part: String) -> Bool { only == nil || only == part }

        let root = "/dev/shm/secretsfs-bench-\(getpid())"
        let tmpfsDir = root + "/tmpfs"
        try FileManager.default.createDirectory(atPath: tmpfsDir, withIntermediateDirectories: true)
        let value = "not-a-real-password-0123456789"
        try value.write(toFile: tmpfsDir + "/PASSWORD", atomically: false, encoding: .utf8)

        let (_, recipientOutput) = shell([binary, "keygen", "-o", root + "/identity.txt"])
        let recipient = recipientOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        var secrets = "[production]\nPASSWORD = \"\(value)\"\nFRESH_PASSWORD = \"\(value)\"\nAUDITED_PASSWORD = \"\(value)\"\n\n[big]\n"
        for index in 0..<10_000 { secrets += "KEY_\(index) = \"value-\(index)\"\n" }
        shell([binary, "encrypt", "-r", recipient, "-o", root + "/secrets.toml.age"], input: secrets)

        func writeConfig(noOpen: Bool, mountpoint: String, extra: String = "") -> String {
            let path = root + "/config-\(noOpen)\(extra.isEmpty ? "" : "-extra").toml"
            let text = """
                [mount]
                path = "\(mountpoint)"
                no_open = \(noOpen)
                [cache]
                ttl = "10m"
                fresh = ["FRESH_*"]
                [stores.local]
                type = "file"
                files = ["secrets.toml.age"]
                identity = "identity.txt"
                \(extra)
                """
            try? text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }


        func mount(noOpen: Bool, extra: String = "") -> Mounted? {
            let mountpoint = root + "/mnt-\(noOpen)\(extra.isEmpty ? "" : "-extra")"
            try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = [
                "mount", "--config", writeConfig(noOpen: noOpen, mountpoint: mountpoint, extra: extra), "--log-level",
                "warning",
            ]
            process.standardInput = FileHandle.nullDevice
            let begin = nanoseconds()
            guard (try? process.run()) != nil else { return nil }
            let probe = mountpoint + "/local/big/KEY_9999"
            for _ in 0..<2000 {
                if isMounted(mountpoint), access(probe, R_OK) == 0 {
                    return Mounted(process: process, mountpoint: mountpoint, readySeconds: Double(nanoseconds() - begin) / 1e9)
                }
                usleep(2000)
            }
            process.terminate()
            return nil
        }

        func unmount(_ mounted: Mounted) {
            mounted.process.terminate()
            mounted.process.waitUntilExit()
            if isMounted(mounted.mountpoint) { shell(["/usr/bin/fusermount3", "-u", "-z", mounted.mountpoint]) }
        }

        defer { try? FileManager.default.removeItem(atPath: root) }

        print("secretsfs benchmark: open/read/close of one small file, \(fmt(seconds, 0)) s per line, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        print("")

        var results: [String: Measurement] = [:]
        func report(_ m: Measurement, baseline: Measurement?) {
            results[m.label] = m
            let ratio = baseline.map { " \(fmt(m.opsPerSecond / $0.opsPerSecond, 2))x tmpfs" } ?? ""
            print("  \(m.label.padding(toLength: 44, withPad: " ", startingAt: 0)) \(fmt(m.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(m.p50).leftPad(7)) us  p99 \(fmt(m.p99).leftPad(7)) us\(ratio)")
        }


        for threads in [1, 4] where wanted("local") {
            print("\(threads) thread\(threads > 1 ? "s" : ""):")
            let tmpfs = measure("tmpfs \(threads)t", path: tmpfsDir + "/PASSWORD", threads: threads, duration: seconds)
            report(tmpfs, baseline: nil)
            for noOpen in [true, false] {
                guard let mounted = mount(noOpen: noOpen) else {
                    print("  mount failed (no_open = \(noOpen))")
                    continue
                }
                let design = noOpen ? "no_open" : "open+keep_cache"
                let cachedPath = mounted.mountpoint + "/local/production/PASSWORD"
                _ = measure("warm", path: cachedPath, threads: 1, duration: 0.2)
                report(measure("secretsfs cached (\(design)) \(threads)t", path: cachedPath, threads: threads, duration: seconds), baseline: tmpfs)
                let freshPath = mounted.mountpoint + "/local/production/FRESH_PASSWORD"
                report(measure("secretsfs fresh (\(design)) \(threads)t", path: freshPath, threads: threads, duration: seconds), baseline: tmpfs)
                unmount(mounted)
            }
            print("")
        }

        // MARK: 10,000 keys in one env

        if wanted("local"), let mounted = mount(noOpen: true) {
            let pid = mounted.process.processIdentifier
            let directory = mounted.mountpoint + "/local/big"
            func timeList(stat doStat: Bool) -> (Double, Int) {
                let begin = nanoseconds()
                var count = 0
                if let dir = opendir(directory) {
                    while let entry = readdir(dir) {
                        count += 1
                        if doStat {
                            let name = withUnsafePointer(to: entry.pointee.d_name) {
                                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                            }
                            var info = stat()
                            _ = stat(directory + "/" + name, &info)
                        }
                    }
                    closedir(dir)
                }
                return (Double(nanoseconds() - begin) / 1e6, count)
            }
            let (lsTime, entries) = timeList(stat: false)
            let (lsLongFirst, _) = timeList(stat: true)
            let (lsLongWarm, _) = timeList(stat: true)
            print("10,000 keys in one env:")
            print("  mount to ready (spawn until a key reads)  \(fmt(mounted.readySeconds * 1000, 0)) ms")
            print("  ls (readdir, \(entries) entries)            \(fmt(lsTime, 1)) ms")
            print("  ls -l (readdir + stat each), first        \(fmt(lsLongFirst, 1)) ms")
            print("  ls -l again (names cached by the kernel)  \(fmt(lsLongWarm, 1)) ms")
            print("  daemon RSS after ls -l                    \(rssKiB(pid) / 1024) MiB")
            unmount(mounted)
        }

        if wanted("local") || wanted("failover"), let mounted = mount(noOpen: true) {
            print("")
            FailoverBench.run(
                supervisor: mounted.process.processIdentifier,
                path: mounted.mountpoint + "/local/production/FRESH_PASSWORD", seconds: seconds)
            unmount(mounted)
        }

        // The audit's cost: an audited cached key asks the daemon on every open (entry timeout 0) and writes a line.
        if wanted("local") || wanted("audit"),
            let mounted = mount(noOpen: true, extra: "[audit]\npath = \"\(root)/audit.jsonl\"\npaths = [\"local/production/AUDITED_*\"]")
        {
            print("")
            print("audit (1 thread, cached keys, one mount):")
            let tmpfs = results["tmpfs 1t"] ?? measure("tmpfs 1t", path: tmpfsDir + "/PASSWORD", threads: 1, duration: seconds)
            let plain = mounted.mountpoint + "/local/production/PASSWORD"
            let audited = mounted.mountpoint + "/local/production/AUDITED_PASSWORD"
            _ = measure("warm", path: plain, threads: 1, duration: 0.2)
            _ = measure("warm", path: audited, threads: 1, duration: 0.2)
            let unauditedResult = measure("secretsfs cached, not audited", path: plain, threads: 1, duration: seconds)
            report(unauditedResult, baseline: tmpfs)
            let auditedResult = measure("secretsfs cached, audited", path: audited, threads: 1, duration: seconds)
            report(auditedResult, baseline: tmpfs)
            // Metrics: the same cached read with a [metrics] listener (counters on the daemon's path only).
            if let metered = mount(noOpen: true, extra: "[metrics]\nlisten = \"unix:\(root)/metrics.sock\"") {
                let path = metered.mountpoint + "/local/production/PASSWORD"
                _ = measure("warm", path: path, threads: 1, duration: 0.2)
                let withMetrics = measure("secretsfs cached, [metrics] on", path: path, threads: 1, duration: seconds)
                report(withMetrics, baseline: tmpfs)
                let ratio = withMetrics.opsPerSecond / unauditedResult.opsPerSecond
                print("  target: cached reads with metrics within 5% of without: \(fmt(ratio * 100, 1))% -> \(ratio >= 0.95 ? "met" : "NOT met")")
                unmount(metered)
            }
            print("  an audited open costs \(fmt(auditedResult.p50 - unauditedResult.p50, 1)) us more at p50 (\(fmt(unauditedResult.opsPerSecond / auditedResult.opsPerSecond, 1))x the time): one LOOKUP and one audit line per open")
            unmount(mounted)
        }

        if let tmpfs1 = results["tmpfs 1t"], let cached1 = results["secretsfs cached (no_open) 1t"] {
            let ratio = cached1.opsPerSecond / tmpfs1.opsPerSecond
            print("")
            print("target: secretsfs cached >= 0.5x tmpfs (1 thread): \(fmt(ratio, 2))x -> \(ratio >= 0.5 ? "met" : "NOT met")")
        }
        print("")
        let python = arguments.count > 3 ? arguments[3] : nil
        if let python, wanted("redis") || wanted("vault") {
            print("python comparison with: \(FreshBench.pythonVersions(python)) (installed unpinned)")
        }
        if wanted("redis") { RedisBench.run(binary: binary, root: root, seconds: seconds, python: python) }
        print("")
        if wanted("vault") { VaultBench.run(binary: binary, root: root, seconds: seconds, python: python) }
        print("")
        if wanted("notices") { NoticeBench.run(binary: binary, root: root, seconds: seconds) }
        print("")
        if wanted("dapr") { DaprBench.run(binary: binary, root: root, seconds: seconds, python: python) }
        print("")
        if wanted("ha") { BackendFailoverBench.run(binary: binary, root: root) }
        print("")
        if wanted("outage") { OutageBench.run(binary: binary, root: root, seconds: seconds) }
        print("")
        if wanted("rendered") { RenderedBench.run(binary: binary, root: root, seconds: seconds) }
        print("")
        if wanted("sops") { SopsBench.run(binary: binary, root: root, seconds: seconds, python: python) }
        print("")
        if wanted("csi") { CSIBench.run(binary: binary, root: root, seconds: seconds, python: python) }
        if wanted("leases") { LeaseBench.run(binary: binary, root: root, seconds: seconds, python: python) }

    }
}
