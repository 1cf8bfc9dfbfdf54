import ArgumentParser
import FileStore
import Foundation
import Glibc
import SecretsCore

struct EditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edit",
        abstract: "Edit a file store's secrets in $EDITOR, then re-encrypt; the plaintext never touches disk.",
        discussion: """
            Decrypts the store's last file (or --file) into a private folder on tmpfs (/dev/shm, mode 0700), runs \
            $EDITOR (default vi) on it, checks the result parses, encrypts it to the store's recipients and \
            replaces the file atomically. The plaintext copy is overwritten with zeros and removed in every case. \
            A result that does not parse leaves the store file unchanged (exit 1). A running mount picks the \
            change up at once (inotify).
            """
    )

    @OptionGroup var options: ConfigOptions

    @Argument(help: "The file store's name.")
    var store: String

    @Option(name: .long, help: "Which of the store's files to edit (default: the last one).")
    var file: String?

    func run() throws {
        let (fileStore, target) = try Runtime.fileStoreTarget(options, store: store, file: file)
        do {
            var original = try fileStore.plaintext(of: target)
            defer { wipe(&original) }
            let scratch = try PrivateScratch(suffix: URL(fileURLWithPath: target).lastPathComponent
                .replacingOccurrences(of: ".age", with: ""))
            defer { scratch.destroy() }
            try scratch.write(original)
            let editor = ProcessInfo.processInfo.environment["EDITOR"] ?? "vi"
            let status = try runEditor(editor, path: scratch.file)
            guard status == 0 else {
                printError("editor exited with status \(status); \(target) is unchanged")
                throw ExitCode(ExitStatus.failure.rawValue)
            }
            var edited = try FileIO.read(scratch.file)
            defer { wipe(&edited) }
            if edited == original {
                printError("no changes; \(target) is unchanged")
                return
            }
            try fileStore.validate(edited, for: target)
            try fileStore.write(edited, to: target)
            printError("wrote \(target)")
        } catch let error as SecretsError {
            printError("\(error); \(target) is unchanged")
            throw Runtime.exitCode(for: error)
        }
    }

    private func runEditor(_ editor: String, path: String) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        // The editor may carry arguments ("code --wait"); the file is passed as "$1", never interpolated.
        process.arguments = ["-c", editor + " \"$1\"", "secretsfs-edit", path]
        // The editor runs in the private folder: the caller's folder may be one this user cannot enter (Foundation
        // then refuses to start the child at all).
        process.currentDirectoryURL = URL(fileURLWithPath: path).deletingLastPathComponent()
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// A private folder on tmpfs holding one plaintext file, wiped and removed by `destroy`.
struct PrivateScratch {
    let directory: String
    let file: String

    init(suffix: String) throws(SecretsError) {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp")
        var template = Array("\(base)/secretsfs-edit-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer -> String? in
            guard let pointer = buffer.baseAddress, let result = mkdtemp(pointer) else { return nil }
            return String(cString: result)
        }
        guard let made else { throw SecretsError(.io, "cannot create a private folder in \(base)") }
        chmod(made, 0o700)
        directory = made
        file = made + "/" + (suffix.isEmpty ? "secrets.toml" : suffix)
    }

    func write(_ bytes: [UInt8]) throws(SecretsError) {
        try FileIO.writeAtomically(file, bytes: bytes, mode: 0o600)
    }

    func destroy() {
        // Overwrite whatever the editor left (including its backup files) before unlinking.
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names {
                let path = directory + "/" + name
                if let size = (try? FileIO.status(path))?.size, size > 0 {
                    let fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
                    if fd >= 0 {
                        let zeros = [UInt8](repeating: 0, count: Int(size))
                        _ = zeros.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                        fsync(fd)
                        close(fd)
                    }
                }
                unlink(path)
            }
        }
        rmdir(directory)
    }
}
