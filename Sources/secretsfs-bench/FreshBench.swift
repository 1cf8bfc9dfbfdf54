import Foundation

/// What the Redis and Vault benches share: mount a config with the built daemon, time a fresh file at 1 and 4
/// threads, and run a Python comparison script.
enum FreshBench {
    /// Mounts one store `name` (its `[stores.<name>]` keys in `storeKeys`) with PASSWORD fresh, runs `body` with the
    /// path of that fresh file while the daemon is up, then stops it.
    static func withMount(binary: String, root: String, name: String, storeKeys: String, _ body: (String, Int32) -> Void) {
        let mountpoint = root + "/mnt-" + name
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let config = root + "/\(name).toml"
        let configText = """
            [mount]
            path = "\(mountpoint)"
            [cache]
            fresh = ["PASSWORD"]
            [stores.\(name)]
            type = "\(name)"
            \(storeKeys)
            """
        try? configText.write(toFile: config, atomically: true, encoding: .utf8)
        let path = mountpoint + "/\(name)/production/PASSWORD"
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: path) { daemon in body(path, daemon) }
    }

    /// The raw round trip and fresh reads on one thread, measured in alternating slices so that both see the same
    /// server (a dev server's speed drifts over a run), then fresh reads on 4 threads; printed, with the p50 target.
    /// `rawTrip` makes one round trip and returns its latency in nanoseconds, nil on failure.
    static func measureFresh(_ name: String, path: String, seconds: Double, raw: String,
                             rawTrip: () -> UInt64?) -> (raw: Measurement, one: Measurement, four: Measurement)?
    {
        let rounds = 4
        var rawSamples: [UInt64] = []
        var freshSamples: [UInt64] = []
        var rawElapsed = 0.0
        var freshElapsed = 0.0
        for _ in 0..<rounds {
            let begin = nanoseconds()
            let end = begin + UInt64(seconds / Double(rounds) * 1e9)
            while nanoseconds() < end {
                guard let latency = rawTrip() else {
                    print("  \(raw) failed")
                    return nil
                }
                rawSamples.append(latency)
            }
            rawElapsed += Double(nanoseconds() - begin) / 1e9
            let (samples, elapsed) = measureSamples(
                "fresh \(name)", path: path, threads: 1, duration: seconds / Double(rounds))
            freshSamples += samples
            freshElapsed += elapsed
        }
        let rawResult = summarize("raw", rawSamples, elapsed: rawElapsed)
        let one = summarize("secretsfs fresh \(name) 1t", freshSamples, elapsed: freshElapsed)
        let four = measure("secretsfs fresh \(name) 4t", path: path, threads: 4, duration: seconds)
        print("  \(raw.padding(toLength: 46, withPad: " ", startingAt: 0)) \(fmt(rawResult.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(rawResult.p50).leftPad(7)) us")
        for m in [one, four] {
            print("  \(m.label.padding(toLength: 46, withPad: " ", startingAt: 0)) \(fmt(m.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(m.p50).leftPad(7)) us  p99 \(fmt(m.p99).leftPad(7)) us")
        }
        let overhead = one.p50 - rawResult.p50
        print("  target: fresh p50 <= raw p50 + 150 us: +\(fmt(overhead)) us -> \(overhead <= 150 ? "met" : "NOT met")")
        return (rawResult, one, four)
    }

    /// Python's file reads against Dynaconf's `get_fresh`, with the ceiling of any design that asks the server once
    /// per open: raw round trips per second over `get_fresh` calls per second.
    static func printPythonRatio(files: Double, getFresh: Double, rawPerSecond: Double, target: Double) {
        print("  python dynaconf settings.get_fresh('PASSWORD')  \(fmt(getFresh, 0).leftPad(9)) reads/s")
        let speedup = files / getFresh
        let ceiling = rawPerSecond / getFresh
        print("  ceiling: one raw round trip per open and nothing else would be \(fmt(ceiling, 1))x get_fresh")
        print("  target: python file read >= \(fmt(target, 0))x get_fresh: \(fmt(speedup, 1))x -> \(speedup >= target ? "met" : "NOT met")")
        // Judged with the ceiling beside it: a Python fresh read should reach 60% of one raw round trip per open.
        let share = speedup / ceiling
        print("  target: python file read >= 60% of the ceiling: \(fmt(share * 100, 0))% -> \(share >= 0.6 ? "met" : "NOT met")")
    }

    /// The versions of the Python packages the comparison ran with (installed unpinned, as a new user would).
    static func pythonVersions(_ python: String) -> String {
        let (status, output) = shell([
            python, "-c",
            "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in ('dynaconf', 'redis', 'hvac')))",
        ])
        return status == 0 ? output.trimmingCharacters(in: .whitespacesAndNewlines) : "unknown"
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

/// The built daemon mounting a config for a measurement: started, waited for until `probe` can be read, stopped
/// and unmounted afterwards whatever `body` did.
enum BenchMount {
    static func run(binary: String, config: String, mountpoint: String, probe: String, _ body: (Int32) -> Void) {
        try? FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
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
        for _ in 0..<500 where access(probe, R_OK) != 0 { usleep(10_000) }
        body(daemon.processIdentifier)
    }
}
