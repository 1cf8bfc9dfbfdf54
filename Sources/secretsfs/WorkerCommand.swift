import ArgumentParser
import Handover
import SecretsCore

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Serve a FUSE connection handed over by `secretsfs mount` (started by the supervisor, not by hand).",
        discussion: """
            The supervisor (`secretsfs mount`) starts this with the mounted /dev/fuse descriptor and a control \
            socket. The worker reads the config the supervisor hands it, opens the stores, says it is ready, \
            receives the node table of earlier workers, then serves the connection until it ends. It exits when \
            the supervisor goes away. It speaks the handover protocol version the supervisor announces \
            (`secretsfs handover-protocol` lists the ones it knows). Exit status 2: the config it was handed is \
            not valid; 76: the supervisor speaks a protocol this binary does not.
            """,
        shouldDisplay: false
    )

    @Option(name: .long, help: "The mounted /dev/fuse descriptor, inherited from the supervisor.")
    var fuseFd: Int32

    @Option(name: .long, help: "The control socket to the supervisor, inherited.")
    var controlFd: Int32

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "The page where the worker stamps the requests it serves (protocol 2), inherited.")
    var inflightFd: Int32?

    @Option(name: .long, help: "The memfd holding the workers' encrypted snapshot of cached views (protocol 2), inherited.")
    var snapshotFd: Int32?

    func run() throws {
        let status = Worker(
            fuseFD: fuseFd, controlFD: controlFd, logLevel: logLevel, inflightFD: inflightFd, snapshotFD: snapshotFd
        ).run()
        if status != .success { throw ExitCode(status.rawValue) }
    }
}

struct HandoverProtocolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "handover-protocol",
        abstract: "Print the supervisor/worker handover protocol versions this binary speaks.",
        discussion: """
            Prints `secretsfs-handover <oldest> <newest>`. A running supervisor asks the binary on disk this before \
            a reload (SIGHUP) or a re-exec (SIGUSR2) and speaks the newest version both know; releases before \
            versions existed do not know this command and speak version 0.
            """,
        shouldDisplay: false
    )

    func run() { print(HandoverProtocol.announcement) }
}
