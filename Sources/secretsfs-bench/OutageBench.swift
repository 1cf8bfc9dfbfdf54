import Foundation
import TestSupport

/// Two faults at once, through a real mount: Vault and Redis frozen (SIGSTOP) with cached keys in the cache, then
/// the worker SIGKILLed. Prints how many reads of cached keys the next worker served from the previous worker's
/// snapshot (and how many failed), and how the fresh keys failed: EIO, each within the stores' `timeout`. The
/// baseline, in the same run, is the same loop before the crash (served from the first worker's own cache).
enum OutageBench {
    struct Tally {
        var served = 0
        var failed = 0
        var longestMs = 0.0
    }

    /// Reads each path in turn, once or for `seconds`; counts successes and failures, and the longest read.
    static func loop(_ paths: [String], seconds: Double) -> Tally {
        var tally = Tally()
        let end = nanoseconds() + UInt64(seconds * 1e9)
        repeat {
            for path in paths {
                let begin = nanoseconds()
                if FailoverBench.readOnce(path) { tally.served += 1 } else { tally.failed += 1 }
                tally.longestMs = max(tally.longestMs, Double(nanoseconds() - begin) / 1e6)
            }
        } while nanoseconds() < end
        return tally
    }

    static func run(binary: String, root: String, seconds: Double) {
        print("worker crash during a backend outage (Vault and Redis SIGSTOPped, stale_if_error = 10m, timeout = 1s):")
        do {
            let bao = try BaoServer()
            defer { bao.remove() }
            let redis = try RedisServer()
            defer { redis.remove() }
            try bao.cli(["kv", "put", "secret/dynaconf/production", "NAME=bench", "OTHER=bench", "DB_PASS=bench"])
            try redis.hset("DYNACONF_PRODUCTION", [("NAME", "bench"), ("OTHER", "bench"), ("DB_PASS", "bench")])
            let token = root + "/outage-token"
            try "root\n".write(toFile: token, atomically: true, encoding: .utf8)
            chmod(token, 0o600)
            let mountpoint = root + "/mnt-outage"
            let config = root + "/outage.toml"
            try twoBackendConfig(
                mountpoint: mountpoint, vaultAddress: bao.address, tokenFile: token, redisURL: redis.url,
                cache: "ttl = \"10m\"\nstale_if_error = \"10m\""
            ).write(toFile: config, atomically: true, encoding: .utf8)
            BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: mountpoint + "/vault/production/NAME") { supervisor in
                let cached = ["vault/production/NAME", "redis/production/NAME"].map { mountpoint + "/" + $0 }
                // Never looked up before the crash: the kernel has neither name nor page, the next worker answers.
                let unseen = ["vault/production/OTHER", "redis/production/OTHER"].map { mountpoint + "/" + $0 }
                let fresh = ["vault/production/DB_PASS", "redis/production/DB_PASS"].map { mountpoint + "/" + $0 }
                let before = loop(cached, seconds: seconds / 2)
                bao.pause()
                redis.pause()
                defer {
                    bao.resume()
                    redis.resume()
                }
                guard let worker = FailoverBench.workerPID(of: supervisor) else {
                    print("  no worker found")
                    return
                }
                kill(worker, SIGKILL)
                let crashed = nanoseconds()
                let first = loop(unseen, seconds: 0)
                let afterMs = Double(nanoseconds() - crashed) / 1e6
                let after = loop(cached + unseen, seconds: seconds)
                let freshTally = loop(fresh, seconds: 0)
                print("  backends up, before the crash: cached reads \(before.served) served, \(before.failed) failed")
                print("  first reads of never-seen keys after the SIGKILL: \(first.served) of \(first.served + first.failed) served, \(fmt(afterMs, 0)) ms for both")
                print("  both backends frozen, next worker: cached reads \(after.served) served, \(after.failed) failed (longest \(fmt(after.longestMs, 1)) ms)")
                print("  fresh keys: \(freshTally.failed) of \(freshTally.served + freshTally.failed) EIO, longest \(fmt(freshTally.longestMs, 0)) ms (timeout 1 s)")
                let met = after.failed == 0 && first.failed == 0 && freshTally.served == 0 && freshTally.longestMs < 1100
                print("target: cached keys served through a worker crash during an outage, fresh keys EIO within timeout: \(met ? "met" : "NOT met")")
            }
        } catch {
            print("  skipped (\(error))")
        }
    }
}
