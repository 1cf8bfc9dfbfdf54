import Foundation

/// SOPS files: loading a SOPS YAML of 1,000 keys (one process each: `secretsfs get` of one key against `sops -d` of
/// the file, the real sops from the venv), then cached and fresh reads of a SOPS-backed key beside an age-backed one
/// through one mount.
enum SopsBench {
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }

    static func timeRuns(_ argv: [String], environment: [String: String], runs: Int) -> (Double, Bool) {
        var samples: [Double] = []
        var ok = true
        for _ in 0..<runs {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: argv[0])
            process.arguments = Array(argv.dropFirst())
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            let begin = nanoseconds()
            guard (try? process.run()) != nil else { return (0, false) }
            process.waitUntilExit()
            samples.append(Double(nanoseconds() - begin) / 1e6)
            ok = ok && process.terminationStatus == 0
        }
        return (median(samples), ok)
    }

    static func run(binary: String, root: String, seconds: Double, python: String?) {
        guard let python else {
            print("sops: no python given; skipped")
            return
        }
        let sops = URL(fileURLWithPath: python).deletingLastPathComponent().appendingPathComponent("sops").path
        guard FileManager.default.isExecutableFile(atPath: sops) else {
            print("sops: not installed in the venv (make deps); skipped")
            return
        }
        let (_, versionText) = shell([sops, "--version", "--disable-version-check"])
        let identity = root + "/identity.txt"
        let identityText = (try? String(contentsOfFile: identity, encoding: .utf8)) ?? ""
        let recipient = identityText.split(separator: "\n").first { $0.hasPrefix("# public key: ") }
            .map { String($0.dropFirst("# public key: ".count)) } ?? ""
        var plain = "PASSWORD: not-a-real-password-0123456789\nFRESH_PASSWORD: not-a-real-password-0123456789\n"
        for index in 0..<1_000 { plain += "KEY_\(index): value-\(index)\n" }
        let source = root + "/plain-sops.yaml"
        try? plain.write(toFile: source, atomically: true, encoding: .utf8)
        let environment = ["SOPS_AGE_KEY_FILE": identity]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sops)
        process.arguments = ["--encrypt", "--age", recipient, source]
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        process.standardOutput = out
        guard (try? process.run()) != nil else { return }
        let encrypted = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        unlink(source)
        let file = root + "/secrets.enc.yaml"
        _ = FileManager.default.createFile(atPath: file, contents: encrypted)
        let mountpoint = root + "/mnt-sops"
        let config = root + "/sops.toml"
        try? """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            fresh = ["FRESH_*"]
            [stores.sops]
            type = "file"
            files = [{ path = "secrets.enc.yaml", env = "production" }]
            identity = "identity.txt"
            [stores.age]
            type = "file"
            files = ["secrets.toml.age"]
            identity = "identity.txt"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        print("SOPS (\(versionText.split(separator: "\n").first ?? "sops"), a YAML of 1,002 keys, age recipient):")
        let runs = 15
        let (ours, oursOK) = timeRuns([binary, "get", "--config", config, "--log-level", "error", "sops/production/KEY_999"], environment: [:], runs: runs)
        let (theirs, theirsOK) = timeRuns([sops, "-d", file], environment: environment, runs: runs)
        print("  load (a process each, median of \(runs)): secretsfs get \(fmt(ours)) ms\(oursOK ? "" : " (FAILED)"), sops -d \(fmt(theirs)) ms\(theirsOK ? "" : " (FAILED)") -> \(fmt(theirs / max(ours, 0.001), 1))x")
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: mountpoint + "/sops/production/PASSWORD") { _ in
            reads(mountpoint: mountpoint, seconds: seconds)
        }
    }

    static func reads(mountpoint: String, seconds: Double) {
        for (label, path) in [
            ("cached, age file ", "age/production/PASSWORD"), ("cached, SOPS file", "sops/production/PASSWORD"),
            ("fresh, age file  ", "age/production/FRESH_PASSWORD"), ("fresh, SOPS file ", "sops/production/FRESH_PASSWORD"),
        ] {
            let result = measure(label, path: mountpoint + "/" + path, threads: 1, duration: seconds)
            print("  \(label)  \(fmt(result.opsPerSecond, 0).leftPad(8))/s  p50 \(fmt(result.p50).leftPad(7)) us")
        }
    }
}
