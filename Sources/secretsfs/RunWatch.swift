import Dispatch
import Foundation
import Glibc
import Locking
import SecretsCore

/// `run --watch`: run stays the command's parent, follows the secrets it passed (`ChangeWatch`: the stores' own
/// notices) and, when any changes, restarts the command with the new values, sends it a signal, or exits.
struct WatchedRun {
    enum OnChange: Equatable {
        case restart
        case signal(Int32)
        case exit

        init?(_ text: String) {
            switch text {
            case "restart": self = .restart
            case "exit": self = .exit
            default:
                guard text.hasPrefix("signal:"), let number = WatchedRun.signalNumber(String(text.dropFirst(7))) else {
                    return nil
                }
                self = .signal(number)
            }
        }
    }

    /// The status `--on-change exit` leaves with once the command stopped (EX_TEMPFAIL: start me again).
    static let changedExitStatus: Int32 = 75

    let command: [String]
    let onChange: OnChange
    let stopSignal: Int32
    let grace: Double
    let debounce: Double
    /// Every value the command gets, read now (all or nothing).
    let resolve: () throws(SecretsError) -> [(String, SecretBytes)]
    /// The environment block for a set of values (the caller frees it with `release`).
    let environment: ([(String, SecretBytes)]) -> [UnsafeMutablePointer<CChar>?]

    static let signalNames: [String: Int32] = [
        "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "TERM": SIGTERM, "KILL": SIGKILL, "USR1": SIGUSR1, "USR2": SIGUSR2,
        "WINCH": SIGWINCH, "CONT": SIGCONT, "STOP": SIGSTOP, "ALRM": SIGALRM,
    ]

    static func signalNumber(_ text: String) -> Int32? {
        let name = text.uppercased().hasPrefix("SIG") ? String(text.uppercased().dropFirst(3)) : text.uppercased()
        if let number = signalNames[name] { return number }
        guard let number = Int32(text), number > 0, number < 65 else { return nil }
        return number
    }

    /// The signals run itself takes and hands to the command.
    static let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT]

    /// Blocks the forwarded signals in this thread and every thread started after it (call before any store starts
    /// a thread): one thread takes them with sigwait.
    static func blockForwardedSignals() {
        var mask = sigset_t()
        sigemptyset(&mask)
        for signal in forwarded { sigaddset(&mask, signal) }
        pthread_sigmask(SIG_BLOCK, &mask, nil)
    }

    enum Event: Sendable {
        case changed
        case exited(pid: pid_t, status: Int32)
        case signal(Int32)
    }

    final class Events: Sendable {
        let queue = Locked<[Event]>([])
        let posted = DispatchSemaphore(value: 0)

        func post(_ event: Event) {
            queue.withLock { $0.append(event) }
            posted.signal()
        }

        /// The next event, or nil when `deadline` (a monotonic time) passes first.
        func next(until deadline: Double?) -> Event? {
            while true {
                if let event = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return event }
                if let deadline {
                    let wait = deadline - CoreClock.monotonic()
                    guard wait > 0, posted.wait(timeout: .now() + wait) == .success else {
                        return queue.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                    }
                } else {
                    posted.wait()
                }
            }
        }
    }

    /// As a shell: 127 for a command that is not there, 126 for one that cannot run.
    static func status(of error: SecretsError) -> Int32 {
        error.code == .notFound ? ExitStatus.commandNotFound.rawValue : ExitStatus.commandNotExecutable.rawValue
    }

    static func exitStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    static func versions(_ values: [(String, SecretBytes)]) -> [String: String] {
        Dictionary(values.map { ($0.0, ChangeWatch.version(of: $0.1)) }, uniquingKeysWith: { _, last in last })
    }

    /// Starts the command with `values`; a thread waits for it and posts its exit.
    func spawn(_ values: [(String, SecretBytes)], events: Events) throws(SecretsError) -> pid_t {
        var block = environment(values)
        defer { RunCommand.release(&block) }
        let started = try ChildProcess.spawn(
            command[0], command, environment: block, searchPath: true, defaultSignals: Self.forwarded + [SIGPIPE, SIGCHLD])
        Thread {
            var status: Int32 = 0
            while waitpid(started, &status, 0) < 0 && errno == EINTR {}
            events.post(.exited(pid: started, status: status))
        }.start()
        return started
    }

    /// Runs the command under watch until it exits on its own (its status becomes run's) or, with `exit`, until a
    /// change stopped it.
    func run(_ first: [(String, SecretBytes)], watch: (Events) -> ChangeWatch) -> Int32 {
        let events = Events()
        Thread {
            var mask = sigset_t()
            sigemptyset(&mask)
            for signal in Self.forwarded { sigaddset(&mask, signal) }
            var received: Int32 = 0
            while true {
                if sigwait(&mask, &received) == 0 { events.post(.signal(received)) }
            }
        }.start()
        var child: pid_t
        do {
            child = try spawn(first, events: events)
        } catch {
            printError("run: \(error)")
            return Self.status(of: error)
        }
        var current = Self.versions(first)
        // Held for as long as run runs: the stores' notices reach it through weak references.
        let following = watch(events)
        defer { following.stop() }
        var changeDue: Double?
        // A stop in progress: the child being stopped, when it gets SIGKILL, and what follows its exit.
        var stopping: (pid: pid_t, killAt: Double, then: [(String, SecretBytes)]?)?
        var leaving: Int32?
        while true {
            // A change due while the command stops waits for its exit (the exit event wakes this loop).
            let deadline = [stopping == nil && leaving == nil ? changeDue : nil, stopping?.killAt].compactMap { $0 }
                .filter(\.isFinite).min()
            let event = events.next(until: deadline)
            let now = CoreClock.monotonic()
            if let stop = stopping, now >= stop.killAt {
                kill(stop.pid, SIGKILL)
                stopping?.killAt = .infinity
            }
            switch event {
            case .changed?:
                if changeDue == nil { changeDue = now + debounce }
            case .signal(let signal)?:
                // Handed to the command; for all but SIGHUP (a reload), run leaves with its status once it exits.
                kill(stopping?.pid ?? child, signal)
                guard signal != SIGHUP else { break }
                leaving = signal
                if stopping == nil { stopping = (child, now + grace, nil) }
            case .exited(let pid, let status)?:
                if let stop = stopping, stop.pid == pid {
                    stopping = nil
                    if leaving != nil { return Self.exitStatus(status) }
                    guard let next = stop.then else { return Self.changedExitStatus }
                    let started: pid_t
                    do {
                        started = try spawn(next, events: events)
                    } catch {
                        printError("run: \(error)")
                        return Self.status(of: error)
                    }
                    child = started
                    current = Self.versions(next)
                    printError("run: restarted \(command[0]) (pid \(started)) with the new values")
                } else if pid == child {
                    return Self.exitStatus(status)
                }
            case nil:
                break
            }
            guard let due = changeDue, now >= due, stopping == nil, leaving == nil else { continue }
            changeDue = nil
            let values: [(String, SecretBytes)]
            do {
                values = try resolve()
            } catch {
                printError("run: after a change, \(error); \(command[0]) keeps running with the values it has, and the next change tries again")
                continue
            }
            let versions = Self.versions(values)
            let changed = versions.keys.filter { versions[$0] != current[$0] }.sorted()
            guard !changed.isEmpty else { continue }
            let names = changed.joined(separator: ", ")
            switch onChange {
            case .restart:
                printError("run: \(names) changed; stopping \(command[0]) (pid \(child)) to start it again")
                kill(child, stopSignal)
                stopping = (child, now + grace, values)
            case .signal(let signal):
                printError("run: \(names) changed; sending signal \(signal) to \(command[0]) (pid \(child))")
                kill(child, signal)
                current = versions
            case .exit:
                printError("run: \(names) changed; stopping \(command[0]) (pid \(child)) and exiting \(Self.changedExitStatus)")
                kill(child, stopSignal)
                stopping = (child, now + grace, nil)
            }
        }
    }
}
