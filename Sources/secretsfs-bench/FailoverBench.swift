import Foundation

/// Worker failover and live reload, measured with 4 readers of a fresh key (every open reaches the daemon):
/// the time from a worker's SIGKILL to the next successful read, and the longest single read while a reload
/// (SIGHUP) swaps the worker, against the longest read of the same loop without a reload, in the same run.
enum FailoverBench {
    static func workerPID(of supervisor: Int32) -> Int32? {
        let children = (try? String(contentsOfFile: "/proc/\(supervisor)/task/\(supervisor)/children", encoding: .utf8)) ?? ""
        for child in children.split(separator: " ").compactMap({ Int32($0) }) {
            let command = (try? String(contentsOfFile: "/proc/\(child)/cmdline", encoding: .utf8)) ?? ""
            if command.split(separator: "\0").dropFirst().first == "worker" { return child }
        }
        return nil
    }

    static func readOnce(_ path: String) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 256)
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } > 0
    }

    /// Readers on `threads` threads until `stop` is set; each records its longest read and its failures.
    final class Readers: @unchecked Sendable {
        let stop = Mutexless(value: 0)
        var longest: [UInt64]
        var failures: [Int]
        var reads: [Int]
        let group = DispatchGroup()

        init(path: String, threads: Int) {
            longest = Array(repeating: 0, count: threads)
            failures = Array(repeating: 0, count: threads)
            reads = Array(repeating: 0, count: threads)
            for index in 0..<threads {
                group.enter()
                Thread { [self] in
                    while stop.value == 0 {
                        let begin = nanoseconds()
                        if FailoverBench.readOnce(path) { reads[index] += 1 } else { failures[index] += 1 }
                        longest[index] = max(longest[index], nanoseconds() - begin)
                    }
                    group.leave()
                }.start()
            }
        }

        func finish() -> (longestMs: Double, failures: Int, reads: Int) {
            stop.value = 1
            group.wait()
            return (Double(longest.max() ?? 0) / 1e6, failures.reduce(0, +), reads.reduce(0, +))
        }
    }

    static func run(supervisor: Int32, path: String, seconds: Double) {
        print("failover and reload (local store, fresh key, 4 readers):")
        // Baseline: the same readers, nothing happening.
        let quiet = Readers(path: path, threads: 4)
        usleep(useconds_t(seconds * 1e6))
        let baseline = quiet.finish()

        // Failover: SIGKILL the worker ten times, 0.8 s apart (a worker that served is replaced at once, however
        // short its life); after each, time until a read succeeds again.
        let readers = Readers(path: path, threads: 4)
        var failovers: [Double] = []
        for _ in 0..<10 {
            usleep(800_000)
            guard let worker = workerPID(of: supervisor) else { break }
            let begin = nanoseconds()
            kill(worker, SIGKILL)
            // A read that starts after the kill and succeeds was served by the next worker.
            while !readOnce(path) {
                if nanoseconds() - begin > 30_000_000_000 { break }
            }
            failovers.append(Double(nanoseconds() - begin) / 1e6)
            while workerPID(of: supervisor) == worker { usleep(1000) }
        }
        let killed = readers.finish()

        // Reload: SIGHUP while the readers run; the longest single read is the pause a reader sees.
        let reloading = Readers(path: path, threads: 4)
        usleep(300_000)
        let before = workerPID(of: supervisor)
        kill(supervisor, SIGHUP)
        let reloadBegin = nanoseconds()
        while workerPID(of: supervisor) == before && nanoseconds() - reloadBegin < 30_000_000_000 { usleep(1000) }
        usleep(useconds_t(max(0.5, seconds / 2) * 1e6))
        let reload = reloading.finish()

        let sorted = failovers.sorted()
        let median = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        let worst = sorted.last ?? 0
        print("  no switch: longest read \(fmt(baseline.longestMs, 2)) ms over \(baseline.reads) reads, \(baseline.failures) failed")
        print("  worker SIGKILL -> next successful read: median \(fmt(median, 1)) ms, max \(fmt(worst, 1)) ms (\(failovers.count) kills 0.8 s apart: \(failovers.map { fmt($0, 1) }.joined(separator: ", ")) ms); readers: \(killed.reads) reads, \(killed.failures) failed, longest \(fmt(killed.longestMs, 1)) ms")
        print("  reload (SIGHUP): longest read \(fmt(reload.longestMs, 2)) ms (\(fmt(reload.longestMs / max(baseline.longestMs, 0.001), 1))x the no-switch longest), \(reload.reads) reads, \(reload.failures) failed")
        let failoverMet = worst < 1000 && killed.failures == 0
        let reloadMet = reload.longestMs < 100 && reload.failures == 0
        print("target: failover < 1 s with zero failed reads: \(failoverMet ? "met" : "NOT met")")
        print("target: longest read during reload < 100 ms with zero failed reads: \(reloadMet ? "met" : "NOT met")")
    }
}
