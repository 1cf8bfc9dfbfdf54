import Age
import ArgumentParser
import SecretsCore

struct EncryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Encrypt a file to age recipients or a passphrase (age format, readable by age -d).",
        discussion: """
            Example: secretsfs encrypt -r age1... -o secrets.toml.age secrets.toml
            With -a the file is ASCII-armored text (for review tools and git diffs of the envelope).
            INPUT defaults to standard input ("-"). Either one or more -r recipients or --passphrase-file.
            """
    )

    @Option(name: [.customShort("r"), .long], help: "An age recipient (age1...); repeat for several.")
    var recipient: [String] = []

    @Option(name: .long, help: "Encrypt with the passphrase in this file (scrypt) instead of recipients.")
    var passphraseFile: String?

    @Option(name: .long, help: "scrypt work factor, log2(N); age uses 18.")
    var workFactor: Int = 18

    @Option(name: .shortAndLong, help: "Write here (mode 0600) instead of standard output.")
    var output: String?

    @Flag(name: [.customShort("a"), .long], help: "ASCII armor (PEM-like text, as age -a writes); stores read both.")
    var armor = false

    @Argument(help: "The plaintext file, or - for standard input.")
    var input: String = "-"

    func run() throws {
        var recipients: [Recipient] = []
        do {
            for text in recipient { recipients.append(.x25519(try X25519Recipient(string: text))) }
            if let passphraseFile {
                recipients.append(.scrypt(passphrase: try FileIO.readPassphrase(passphraseFile), workFactor: workFactor))
            }
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        guard !recipients.isEmpty else {
            printError("give -r <recipient> or --passphrase-file")
            throw ExitCode(ExitStatus.invalidConfig.rawValue)
        }
        do {
            var plaintext = input == "-" ? readStandardInput() : try FileIO.read(input)
            defer { wipe(&plaintext) }
            let binary = try AgeFile.encrypt(plaintext, to: recipients)
            let sealed = armor ? AgeArmor.encode(binary) : binary
            if let output {
                try FileIO.writeAtomically(output, bytes: sealed, mode: 0o600)
            } else {
                writeStdout(sealed)
            }
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.failure.rawValue)
        }
    }
}
