import ArgumentParser
import SecretsCore

@main
struct SecretsFSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secretsfs",
        abstract: "Serve secrets as read-only files: /secrets/<store>/<env>/<key>.",
        discussion: """
            A store is a configured backend (age-encrypted local files, Vault/OpenBao KV, Redis hashes); a scope is an ordered chain of \
            stores, the first that has a key wins. Envs follow Dynaconf: keys under [default] show in every env \
            unless the env overrides them, and [global] overrides both.

            Exit status: 0 success, 1 runtime failure, 2 bad usage or malformed config (nothing mounted), \
            3 store, env or key not found; `run` exits with its command's status (126/127 when it cannot start it).
            """,
        subcommands: [
            MountCommand.self, WorkerCommand.self, HandoverProtocolCommand.self, GetCommand.self, RunCommand.self, StatusCommand.self, ImportCommand.self, CheckCommand.self, KeygenCommand.self, EncryptCommand.self,
            DecryptCommand.self, EditCommand.self, SetCommand.self, WriteCommand.self, WatchCommand.self,
        ]
    )

    static func main() {
        // Every command may hold decrypted values: a crash must not leave them in a core file.
        ProcessHardening.disableCoreDumps()
        ProcessHardening.disableDumping()
        main(nil)
    }
}
