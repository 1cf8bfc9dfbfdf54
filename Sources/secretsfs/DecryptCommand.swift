import Age
import ArgumentParser
import SecretsCore

struct DecryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt an age file with an identity file or a passphrase file.",
        discussion: """
            Example: secretsfs decrypt -i identity.txt secrets.toml.age
            The plaintext goes to standard output, or to -o (mode 0600). The identity and passphrase files must be \
            mode 0600 or stricter and owned by you.
            """
    )

    @Option(name: [.customShort("i"), .long], help: "An age identity file.")
    var identity: String?

    @Option(name: .long, help: "A file holding the passphrase (scrypt).")
    var passphraseFile: String?

    @Option(name: .shortAndLong, help: "Write here (mode 0600) instead of standard output.")
    var output: String?

    @Argument(help: "The age file, or - for standard input.")
    var input: String = "-"

    func run() throws {
        do {
            var identities: [Identity] = []
            if let identity {
                try FileIO.requirePrivate(identity, what: "identity file")
                identities += try X25519Identity.parseFile(try FileIO.readText(identity)).map { Identity.x25519($0) }
            }
            if let passphraseFile {
                identities.append(.scrypt(passphrase: try FileIO.readPassphrase(passphraseFile), maxWorkFactor: 22))
            }
            guard !identities.isEmpty else {
                printError("give -i <identity file> or --passphrase-file")
                throw ExitCode(ExitStatus.invalidConfig.rawValue)
            }
            let sealed = input == "-" ? readStandardInput() : try FileIO.read(input)
            var plaintext = try AgeFile.decrypt(sealed, identities: identities)
            defer { wipe(&plaintext) }
            if let output {
                try FileIO.writeAtomically(output, bytes: plaintext, mode: 0o600)
            } else {
                writeStdout(plaintext)
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
    }
}
