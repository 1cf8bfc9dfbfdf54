import Age
import ArgumentParser
import Glibc
import SecretsCore

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Create an age X25519 identity; print its public recipient (age1...).",
        discussion: """
            With -o, writes the identity to a new file with mode 0600 (an existing file is never overwritten) and \
            prints the recipient on standard output. Without -o, prints the identity file on standard output and \
            the recipient on standard error, like age-keygen. The file is compatible with age and age-keygen.
            """
    )

    @Option(name: .shortAndLong, help: "Write the identity to this new file (mode 0600).")
    var output: String?

    func run() throws {
        let identity = X25519Identity.generate()
        let recipient = identity.recipient.description
        let text = "# created by secretsfs keygen\n# public key: \(recipient)\n\(identity.secretString)\n"
        guard let output else {
            writeStdout(Array(text.utf8))
            printError("public key: \(recipient)")
            return
        }
        let fd = open(output, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            printError("cannot create \(output): \(FileIO.errnoText(errno)) (an existing identity is never overwritten)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        guard written == bytes.count else {
            printError("cannot write \(output)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
        print(recipient)
    }
}
