import Age
import RedisClient
import RedisStore
import SecretsCore
import VaultStore

/// Every fuzz target: a name and what it does with one input. The fuzzer (Tests/Fuzz/Sources, `make fuzz`) runs one
/// per `FUZZ_TARGET`; FuzzRegressionTests replays the seed corpus and every saved crash input through the same code.
public enum FuzzTargets {
    /// A key made for fuzzing only (it protects nothing): the age seeds in Corpus/age are encrypted to it, so mutated
    /// inputs get past the header into the stanza, MAC and payload code.
    public static let identity: X25519Identity? = try? X25519Identity(
        string: "AGE-SECRET-KEY-1LPS7L4Q3NKK43588YL2PY8JC540ZAQLY08MQHR899EJVLAH9YPVQ6X6UK2")

    public static let all: [String: @Sendable ([UInt8]) -> Void] = [
        // The config loader: TOML, then every section's checks.
        "config": { bytes in
            _ = try? Config.parse(text: String(decoding: bytes, as: UTF8.self), file: "fuzz.toml")
        },
        // age: armor detection and decoding, header, stanzas, MAC, payload chunks.
        "age": { bytes in
            _ = try? AgeFile.decrypt(bytes, identities: identity.map { [.x25519($0)] } ?? [])
        },
        "armor": { bytes in _ = try? AgeArmor.decode(bytes) },
        "identity": { bytes in _ = try? X25519Identity.parseFile(String(decoding: bytes, as: UTF8.self)) },
        // Redis replies, one after another as the connection reads them.
        "resp": { bytes in
            let parser = RESPParser()
            var start = 0
            while start < bytes.count, let (_, next) = try? parser.parse(bytes, from: start), next > start {
                start = next
            }
        },
        "json": { bytes in _ = SecretValue.parseJSON(bytes) },
        // Dynaconf's type tokens, and the bytes a decoded value is served as.
        "tokens": { bytes in _ = DynaconfTokens.decode(bytes).fileBytes() },
        "vault": { bytes in
            _ = VaultStore.decodeSecretBody(bytes, v2: true)
            _ = VaultStore.decodeSecretBody(bytes, v2: false)
        },
    ]
}
