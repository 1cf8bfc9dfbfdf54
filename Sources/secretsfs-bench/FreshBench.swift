import Foundation

/// What the Redis and Vault benches share: mount a config with the built daemon, time a fresh file at 1 and 4
/// threads, and run a Python comparison script.
enum FreshBench {
    /// Mounts `configText` (its `[mount] path` must be `mountpoint`), runs `body` with the daemon up, then stops it.
    static func withMount(binary: String, root: String, name: String, configText: String, probe: String,
                          _ body: () -> Void) {
        let mountpoint = root + "/mnt-" + name
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let config = root + "/\(name).toml"
        try? configText.write(toFile: config, atomically: true, encoding: .utf8)
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
        for _ in 0..<500 where access(mountpoint + "/" + probe, R_OK) != 0 { usleep(10_000) }
        body()
    }

    /// Fresh reads at 1 and 4 threads, printed, with the p50 target against the raw round trip.
    static func measureFresh(_ name: String, path: String, seconds: Double, rawP50: Double, raw: String)
        -> (one: Measurement, four: Measurement)
    {
        let one = measure("secretsfs fresh \(name) 1t", path: path, threads: 1, duration: seconds)
        let four = measure("secretsfs fresh \(name) 4t", path: path, threads: 4, duration: seconds)
        for m in [one, four] {
            print("  \(m.label.padding(toLength: 46, withPad: " ", startingAt: 0)) \(fmt(m.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(m.p50).leftPad(7)) us  p99 \(fmt(m.p99).leftPad(7)) us")
        }
        let overhead = one.p50 - rawP50
        print("  target: fresh p50 <= \(raw) + 150 us: +\(fmt(overhead)) us -> \(overhead <= 150 ? "met" : "NOT met")")
        return (one, four)
    }

    /// Imports and `loop(fn)`: calls per second of `fn` for `seconds` (a global the script sets before using it).
    static let pythonPreamble = """
        import os, time
        from dynaconf import Dynaconf
        def loop(fn):
            count, end = 0, time.perf_counter() + seconds
            while time.perf_counter() < end:
                fn(); count += 1
            return count / seconds

        """

    /// Runs a Python script that prints numbers on one line; nil when it fails.
    static func python(_ python: String, script: String, environment: [String: String]) -> [Double]? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe()
        process.standardOutput = out
        guard (try? process.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            print("  python comparison failed (exit \(process.terminationStatus))")
            return nil
        }
        return String(decoding: data, as: UTF8.self).split(separator: " ").compactMap {
            Double($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
