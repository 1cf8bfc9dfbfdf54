import Foundation
import Locking

/// A simulated container: its own mount namespace (`unshare --mount`), one folder of the mount bound into it, and a
/// non-root reader (`setpriv`, uid/gid 65534) that opens and reads files in a loop for a while, the way an
/// application in a container would. It reports counts and errno names, never the values it read.
public final class ContainerReader: @unchecked Sendable {
    public struct Report: Sendable, Decodable {
        /// Reads that returned one of the expected values.
        public var ok: Int
        /// Failed opens or reads, by errno name.
        public var failures: [String: Int]
        /// Reads that returned something not expected.
        public var unexpected: Int
        /// Per file, the indexes of the expected values in the order they were first seen (a rotation: [0, 1]).
        public var seen: [String: [Int]]
        /// The longest single open+read, in milliseconds.
        public var longest_ms: Double
    }

    static let script = """
        import errno, json, os, sys, time
        root, spec_path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
        with open(spec_path) as f:
            spec = json.load(f)
        ok, unexpected, longest = 0, 0, 0.0
        failures, seen = {}, {name: [] for name in spec}
        print("started", flush=True)
        end = time.monotonic() + seconds
        stop = os.path.join(os.path.dirname(spec_path), "stop")
        while time.monotonic() < end and not os.path.exists(stop):
            for name, allowed in spec.items():
                start = time.monotonic()
                try:
                    with open(os.path.join(root, name), "rb", buffering=0) as handle:
                        text = handle.read().decode("utf-8", "replace")
                    if text in allowed:
                        ok += 1
                        index = allowed.index(text)
                        if index not in seen[name]:
                            seen[name].append(index)
                            print("seen", name, index, flush=True)
                        if ok % 5 == 0:
                            print("ok", ok, flush=True)
                    else:
                        unexpected += 1
                except OSError as error:
                    code = errno.errorcode.get(error.errno, str(error.errno))
                    failures[code] = failures.get(code, 0) + 1
                longest = max(longest, time.monotonic() - start)
        print(json.dumps({"ok": ok, "failures": failures, "unexpected": unexpected, "seen": seen,
                          "longest_ms": longest * 1000}), flush=True)
        """

    /// What the reader reported while it ran: progress lines, then the report.
    struct Progress {
        var ok = 0
        var seen: [String: Set<Int>] = [:]
        var lines: [String] = []
        var ended = false
    }

    public let process: Process
    let output: Pipe
    let folder: String
    let progress = Locked(Progress())
    let ended = DispatchSemaphore(value: 0)
    let started = DispatchSemaphore(value: 0)

    /// Starts the reader: `source` (a folder in the mount) is bound at a private path inside a new mount namespace;
    /// `files` maps a file name to the values it may hold, in the order they are expected to appear.
    public init(source: String, files: [String: [String]], seconds: Double) throws {
        folder = try TemporaryDirectory().path
        chmod(folder, 0o755)
        let spec = try JSONSerialization.data(withJSONObject: files)
        try spec.write(to: URL(fileURLWithPath: folder + "/spec.json"))
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: folder + "/reader.py"))
        mkdir(folder + "/bind", 0o755)
        for file in ["spec.json", "reader.py"] { chmod(folder + "/" + file, 0o644) }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        process.arguments = [
            "--mount", "--propagation", "private", "/bin/sh", "-c",
            "mount --bind \"$1\" \"$2/bind\" && exec /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups "
                + "/usr/bin/python3 \"$2/reader.py\" \"$2/bind\" \"$2/spec.json\" \"$3\"",
            "container", source, folder, "\(seconds)",
        ]
        output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        readLines(output.fileHandleForReading, line: { [self] line in
            let words = line.split(separator: " ")
            progress.withLock { state in
                state.lines.append(line)
                if words.first == "ok", words.count == 2, let count = Int(words[1]) { state.ok = count }
                if words.first == "seen", words.count == 3, let index = Int(words[2]) {
                    state.seen[String(words[1]), default: []].insert(index)
                }
            }
            if line == "started" { started.signal() }
        }, ended: { [self] in
            progress.withLock { $0.ended = true }
            started.signal()
            ended.signal()
        })
        // Wait until the bind is made and the loop runs.
        _ = started.wait(timeout: .now() + 30)
        let first = progress.withLock { $0.lines.first ?? "" }
        guard first == "started" else {
            throw TestFailure.message("container reader did not start: \(first)")
        }
    }

    /// Waits until the reader has made `count` more reads that returned an expected value (it reads through the
    /// mount now), failing after `seconds`.
    public func waitForReads(_ count: Int = 5, seconds: Double = 30) throws {
        let base = progress.withLock { $0.ok }
        try waitUntil("\(count) more good reads in the container", seconds: seconds, every: 0.005) {
            progress.withLock { $0.ok >= base + count || $0.ended }
        }
        guard progress.withLock({ $0.ok >= base + count }) else {
            throw TestFailure.message("the container's reader ended before \(count) more good reads")
        }
    }

    /// Waits until the reader has read value number `index` (in `files`' order) of `file`.
    public func waitForValue(_ file: String, index: Int, seconds: Double = 30) throws {
        try waitUntil("value \(index) of \(file) read in the container", seconds: seconds, every: 0.005) {
            progress.withLock { $0.seen[file]?.contains(index) == true || $0.ended }
        }
        guard progress.withLock({ $0.seen[file]?.contains(index) == true }) else {
            throw TestFailure.message("the container's reader ended before reading value \(index) of \(file)")
        }
    }

    /// Ends the loop now (before its `seconds` ran out), for tests that stop when their last event happened.
    public func stop() {
        _ = FileManager.default.createFile(atPath: folder + "/stop", contents: nil)
    }

    /// Whether the loop still runs (a test checks its events all happened while it read).
    public var isReading: Bool { process.isRunning }

    /// Waits for the loop to end (at most `timeout` seconds; then `onTimeout` runs, e.g. to abort the connection).
    public func wait(timeout: Double, onTimeout: () -> Void) throws -> Report {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        defer { try? FileManager.default.removeItem(atPath: folder) }
        if process.isRunning {
            onTimeout()
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw TestFailure.message("the container's reader hung")
        }
        _ = ended.wait(timeout: .now() + 10)
        let line = progress.withLock { $0.lines.last ?? "" }
        guard let report = try? JSONDecoder().decode(Report.self, from: Data(line.utf8)) else {
            throw TestFailure.message("container reader failed (status \(process.terminationStatus))")
        }
        return report
    }
}
