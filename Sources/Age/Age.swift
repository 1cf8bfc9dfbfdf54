import Crypto
import _CryptoExtras

/// Why an age operation failed. Messages describe the file's structure, never its plaintext or keys.
public struct AgeError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The file is not a well-formed age file (bad header, bad encoding, truncated).
        case malformed
        /// None of the identities opens the file.
        case noMatchingIdentity
        /// The header MAC or a payload chunk failed authentication: the file was altered or the key is wrong.
        case authenticationFailed
        /// A key or identity string is not valid.
        case invalidKey
        /// The scrypt work factor is above the accepted limit.
        case workFactorTooHigh
    }

    public var kind: Kind
    public var message: String

    init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// An X25519 public key, `age1...`.
public struct X25519Recipient: Sendable, Equatable, CustomStringConvertible {
    public let publicKey: [UInt8]

    public init(string: String) throws(AgeError) {
        guard let (hrp, data) = Bech32.decode(string), hrp == "age", data.count == 32, string == string.lowercased()
        else { throw AgeError(.invalidKey, "not an age X25519 recipient (age1...)") }
        self.publicKey = data
    }

    init(publicKey: [UInt8]) { self.publicKey = publicKey }

    public var description: String { Bech32.encode(hrp: "age", data: publicKey) }
}

/// An X25519 private key, `AGE-SECRET-KEY-1...`. Its description never shows the key.
public struct X25519Identity: Sendable, CustomStringConvertible {
    let key: Curve25519.KeyAgreement.PrivateKey

    public init(string: String) throws(AgeError) {
        guard let (hrp, data) = Bech32.decode(string), hrp == "age-secret-key-", data.count == 32,
            string == string.uppercased(), let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: data)
        else { throw AgeError(.invalidKey, "not an age X25519 identity (AGE-SECRET-KEY-1...)") }
        self.key = key
    }

    public static func generate() -> X25519Identity {
        X25519Identity(key: Curve25519.KeyAgreement.PrivateKey())
    }

    private init(key: Curve25519.KeyAgreement.PrivateKey) { self.key = key }

    public var recipient: X25519Recipient { X25519Recipient(publicKey: Array(key.publicKey.rawRepresentation)) }

    /// The `AGE-SECRET-KEY-1...` text, for writing an identity file.
    public var secretString: String {
        Bech32.encode(hrp: "age-secret-key-", data: Array(key.rawRepresentation)).uppercased()
    }

    public var description: String { "X25519Identity(<redacted>, recipient: \(recipient))" }

    /// Parses an identity file: one `AGE-SECRET-KEY-1...` a line; blank lines and `#` comments are skipped.
    public static func parseFile(_ text: String) throws(AgeError) -> [X25519Identity] {
        var identities: [X25519Identity] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.hasSuffix("\r") ? raw.dropLast() : raw
            if line.isEmpty || line.hasPrefix("#") { continue }
            do {
                identities.append(try X25519Identity(string: String(line)))
            } catch {
                throw AgeError(.invalidKey, "line \(index + 1) of the identity file is not an age identity")
            }
        }
        if identities.isEmpty { throw AgeError(.invalidKey, "the identity file holds no identity") }
        return identities
    }
}

/// Who a file is encrypted to.
public enum Recipient: Sendable {
    case x25519(X25519Recipient)
    /// A passphrase; `workFactor` is log2 of scrypt's N (age uses 18).
    case scrypt(passphrase: [UInt8], workFactor: Int)
}

/// What can open a file.
public enum Identity: Sendable {
    case x25519(X25519Identity)
    /// A passphrase; files asking for a work factor above `maxWorkFactor` are refused.
    case scrypt(passphrase: [UInt8], maxWorkFactor: Int)
}

/// The age file format, age-encryption.org/v1.
public enum AgeFile {
    static let versionLine = Array("age-encryption.org/v1".utf8)
    static let chunkSize = 64 * 1024
    static let tagSize = 16

    /// Whether `bytes` are an age file, binary or ASCII-armored.
    public static func looksLikeAge(_ bytes: [UInt8]) -> Bool {
        bytes.starts(with: versionLine + [UInt8(ascii: "\n")]) || AgeArmor.isArmored(bytes)
    }

    // MARK: Encrypt

    public static func encrypt(_ plaintext: [UInt8], to recipients: [Recipient]) throws(AgeError) -> [UInt8] {
        guard !recipients.isEmpty else { throw AgeError(.invalidKey, "no recipients") }
        let hasScrypt = recipients.contains { if case .scrypt = $0 { true } else { false } }
        if hasScrypt && recipients.count > 1 {
            throw AgeError(.invalidKey, "a passphrase cannot be combined with other recipients")
        }
        var fileKey = randomBytes(16)
        defer { wipeBytes(&fileKey) }
        var stanzas: [Stanza] = []
        for recipient in recipients {
            stanzas.append(try wrap(fileKey, for: recipient))
        }
        var header = versionLine + [UInt8(ascii: "\n")]
        for stanza in stanzas { header += stanza.encoded() }
        header += Array("---".utf8)
        let mac = headerMAC(fileKey: fileKey, header: header)
        var out = header + Array(" \(Base64.encode(mac))\n".utf8)
        let nonce = randomBytes(16)
        out += nonce
        let payloadKey = derive(fileKey, salt: nonce, info: "payload")
        var index = 0
        var counter: UInt64 = 0
        repeat {
            let end = min(index + chunkSize, plaintext.count)
            let last = end == plaintext.count
            out += sealChunk(Array(plaintext[index..<end]), key: payloadKey, counter: counter, last: last)
            index = end
            counter += 1
        } while index < plaintext.count
        return out
    }

    private static func wrap(_ fileKey: [UInt8], for recipient: Recipient) throws(AgeError) -> Stanza {
        switch recipient {
        case .x25519(let recipient):
            let ephemeral = Curve25519.KeyAgreement.PrivateKey()
            let share = Array(ephemeral.publicKey.rawRepresentation)
            guard let theirs = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: recipient.publicKey),
                let shared = try? ephemeral.sharedSecretFromKeyAgreement(with: theirs)
            else { throw AgeError(.invalidKey, "invalid X25519 recipient") }
            let secret = shared.withUnsafeBytes { Array($0) }
            let key = derive(secret, salt: share + recipient.publicKey, info: "age-encryption.org/v1/X25519")
            return Stanza(arguments: ["X25519", Base64.encode(share)], body: seal(fileKey, key: key))
        case .scrypt(let passphrase, let workFactor):
            guard (1...30).contains(workFactor) else { throw AgeError(.workFactorTooHigh, "work factor out of range") }
            let salt = randomBytes(16)
            let key = try scryptKey(passphrase, salt: salt, workFactor: workFactor)
            return Stanza(arguments: ["scrypt", Base64.encode(salt), String(workFactor)], body: seal(fileKey, key: key))
        }
    }

    // MARK: Decrypt

    /// Decrypts a binary or ASCII-armored age file.
    public static func decrypt(_ armoredOrBinary: [UInt8], identities: [Identity]) throws(AgeError) -> [UInt8] {
        let file = AgeArmor.isArmored(armoredOrBinary) ? try AgeArmor.decode(armoredOrBinary) : armoredOrBinary
        let header = try Header.parse(file)
        var fileKey = try unwrap(header.stanzas, identities: identities)
        defer { wipeBytes(&fileKey) }
        let expected = headerMAC(fileKey: fileKey, header: Array(file[..<header.macInputEnd]))
        guard constantTimeEqual(expected, header.mac) else {
            throw AgeError(.authenticationFailed, "header MAC does not match: the file was altered")
        }
        let payload = file[header.payloadStart...]
        guard payload.count >= 16 else { throw AgeError(.malformed, "file is truncated (no payload nonce)") }
        let nonce = Array(payload.prefix(16))
        let payloadKey = derive(fileKey, salt: nonce, info: "payload")
        var chunks = payload.dropFirst(16)
        var out: [UInt8] = []
        var counter: UInt64 = 0
        while true {
            let sealedSize = chunkSize + tagSize
            let last = chunks.count <= sealedSize
            let chunk = chunks.prefix(sealedSize)
            guard chunk.count >= tagSize else { throw AgeError(.malformed, "file is truncated (short chunk)") }
            if last && chunk.count == tagSize && counter > 0 {
                throw AgeError(.malformed, "empty final chunk after data")
            }
            guard let plain = openChunk(Array(chunk), key: payloadKey, counter: counter, last: last) else {
                wipeBytes(&out)
                throw AgeError(.authenticationFailed, "payload chunk \(counter) failed authentication")
            }
            out += plain
            if last { break }
            chunks = chunks.dropFirst(sealedSize)
            counter += 1
        }
        return out
    }

    static func unwrap(_ stanzas: [Stanza], identities: [Identity]) throws(AgeError) -> [UInt8] {
        let scryptCount = stanzas.filter { $0.type == "scrypt" }.count
        if scryptCount > 0 && stanzas.count > 1 {
            throw AgeError(.malformed, "an scrypt stanza must be the only stanza")
        }
        for stanza in stanzas {
            for identity in identities {
                if let key = try unwrap(stanza, with: identity) { return key }
            }
        }
        throw AgeError(.noMatchingIdentity, "no identity matches any recipient of the file")
    }

    private static func unwrap(_ stanza: Stanza, with identity: Identity) throws(AgeError) -> [UInt8]? {
        switch (stanza.type, identity) {
        case ("X25519", .x25519(let identity)):
            guard stanza.arguments.count == 2, let share = Base64.decode(stanza.arguments[1].utf8), share.count == 32
            else { throw AgeError(.malformed, "malformed X25519 stanza") }
            guard stanza.body.count == 32 else { throw AgeError(.malformed, "malformed X25519 stanza body") }
            guard let theirs = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: share),
                let shared = try? identity.key.sharedSecretFromKeyAgreement(with: theirs)
            else { throw AgeError(.malformed, "invalid X25519 share") }
            let secret = shared.withUnsafeBytes { Array($0) }
            if secret.allSatisfy({ $0 == 0 }) { throw AgeError(.malformed, "low-order X25519 share") }
            let key = derive(
                secret, salt: share + identity.recipient.publicKey, info: "age-encryption.org/v1/X25519")
            return open(stanza.body, key: key)
        case ("scrypt", .scrypt(let passphrase, let maxWorkFactor)):
            guard stanza.arguments.count == 3, let salt = Base64.decode(stanza.arguments[1].utf8), salt.count == 16,
                let workFactor = Int(stanza.arguments[2]), String(workFactor) == stanza.arguments[2], workFactor > 0
            else { throw AgeError(.malformed, "malformed scrypt stanza") }
            guard stanza.body.count == 32 else { throw AgeError(.malformed, "malformed scrypt stanza body") }
            guard workFactor <= maxWorkFactor else {
                throw AgeError(.workFactorTooHigh, "scrypt work factor \(workFactor) is above the limit \(maxWorkFactor)")
            }
            let key = try scryptKey(passphrase, salt: salt, workFactor: workFactor)
            return open(stanza.body, key: key)
        default:
            return nil
        }
    }

    // MARK: Primitives

    static func derive(_ secret: [UInt8], salt: [UInt8], info: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: secret), salt: salt, info: Array(info.utf8), outputByteCount: 32)
    }

    static func headerMAC(fileKey: [UInt8], header: [UInt8]) -> [UInt8] {
        let key = derive(fileKey, salt: [], info: "header")
        return Array(HMAC<SHA256>.authenticationCode(for: header, using: key))
    }

    private static func scryptKey(_ passphrase: [UInt8], salt: [UInt8], workFactor: Int) throws(AgeError) -> SymmetricKey {
        do {
            return try KDF.Scrypt.deriveKey(
                from: passphrase, salt: Array("age-encryption.org/v1/scrypt".utf8) + salt, outputByteCount: 32,
                rounds: 1 << workFactor, blockSize: 8, parallelism: 1, maxMemory: 128 * (1 << workFactor) * 8 * 2)
        } catch {
            throw AgeError(.workFactorTooHigh, "scrypt failed for work factor \(workFactor)")
        }
    }

    private static let zeroNonce: ChaChaPoly.Nonce = {
        // A fixed 12-byte all-zero nonce is always valid.
        guard let nonce = try? ChaChaPoly.Nonce(data: [UInt8](repeating: 0, count: 12)) else {
            preconditionFailure("12 bytes are a valid ChaChaPoly nonce")
        }
        return nonce
    }()

    private static func seal(_ plaintext: [UInt8], key: SymmetricKey) -> [UInt8] {
        guard let box = try? ChaChaPoly.seal(plaintext, using: key, nonce: zeroNonce) else { return [] }
        return Array(box.ciphertext) + Array(box.tag)
    }

    private static func open(_ sealed: [UInt8], key: SymmetricKey) -> [UInt8]? {
        guard sealed.count >= tagSize,
            let box = try? ChaChaPoly.SealedBox(
                nonce: zeroNonce, ciphertext: sealed.dropLast(tagSize), tag: sealed.suffix(tagSize))
        else { return nil }
        return try? Array(ChaChaPoly.open(box, using: key))
    }

    private static func chunkNonce(_ counter: UInt64, last: Bool) -> ChaChaPoly.Nonce? {
        var bytes = [UInt8](repeating: 0, count: 12)
        for index in 0..<8 { bytes[3 + index] = UInt8((counter >> UInt64(8 * (7 - index))) & 0xFF) }
        bytes[11] = last ? 1 : 0
        return try? ChaChaPoly.Nonce(data: bytes)
    }

    private static func sealChunk(_ plaintext: [UInt8], key: SymmetricKey, counter: UInt64, last: Bool) -> [UInt8] {
        guard let nonce = chunkNonce(counter, last: last),
            let box = try? ChaChaPoly.seal(plaintext, using: key, nonce: nonce)
        else { return [] }
        return Array(box.ciphertext) + Array(box.tag)
    }

    private static func openChunk(_ sealed: [UInt8], key: SymmetricKey, counter: UInt64, last: Bool) -> [UInt8]? {
        guard let nonce = chunkNonce(counter, last: last),
            let box = try? ChaChaPoly.SealedBox(
                nonce: nonce, ciphertext: sealed.dropLast(tagSize), tag: sealed.suffix(tagSize))
        else { return nil }
        return try? Array(ChaChaPoly.open(box, using: key))
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var diff: UInt8 = 0
        for index in 0..<lhs.count { diff |= lhs[index] ^ rhs[index] }
        return diff == 0
    }

    static func wipeBytes(_ bytes: inout [UInt8]) {
        for index in bytes.indices { bytes[index] = 0 }
    }
}

/// One recipient stanza: `-> type args...` and a base64 body wrapped at 64 columns.
struct Stanza {
    var arguments: [String]
    var body: [UInt8]

    var type: String { arguments.first ?? "" }

    func encoded() -> [UInt8] {
        var out = Array(("-> " + arguments.joined(separator: " ") + "\n").utf8)
        let text = Array(Base64.encode(body).utf8)
        var index = 0
        // Full 64-column lines, then a final shorter (possibly empty) line.
        while index + 64 <= text.count {
            out += text[index..<index + 64] + [UInt8(ascii: "\n")]
            index += 64
        }
        out += text[index...] + [UInt8(ascii: "\n")]
        return out
    }
}

/// The parsed header: its stanzas, its MAC, where the MAC input ends and where the payload starts.
struct Header {
    var stanzas: [Stanza]
    var mac: [UInt8]
    var macInputEnd: Int
    var payloadStart: Int

    static func parse(_ file: [UInt8]) throws(AgeError) -> Header {
        var position = 0
        func nextLine() throws(AgeError) -> ArraySlice<UInt8> {
            guard let newline = file[position...].firstIndex(of: UInt8(ascii: "\n")) else {
                throw AgeError(.malformed, "header is truncated")
            }
            let line = file[position..<newline]
            position = newline + 1
            return line
        }
        guard try nextLine().elementsEqual(AgeFile.versionLine) else {
            throw AgeError(.malformed, "not an age v1 file")
        }
        var stanzas: [Stanza] = []
        while true {
            let lineStart = position
            let line = try nextLine()
            if line.starts(with: Array("---".utf8)) {
                guard line.count == 3 + 1 + 43, line[line.startIndex + 3] == UInt8(ascii: " "),
                    let mac = Base64.decode(line.dropFirst(4)), mac.count == 32
                else { throw AgeError(.malformed, "malformed header MAC line") }
                guard !stanzas.isEmpty else { throw AgeError(.malformed, "header has no recipient stanza") }
                return Header(stanzas: stanzas, mac: mac, macInputEnd: lineStart + 3, payloadStart: position)
            }
            guard line.starts(with: Array("-> ".utf8)) else { throw AgeError(.malformed, "malformed stanza line") }
            let parts = line.dropFirst(3).split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { (33...126).contains($0) } })
            else { throw AgeError(.malformed, "malformed stanza arguments") }
            var body: [UInt8] = []
            while true {
                let bodyLine = try nextLine()
                guard bodyLine.count <= 64, let decoded = Base64.decode(bodyLine) else {
                    throw AgeError(.malformed, "malformed stanza body")
                }
                body += decoded
                if bodyLine.count < 64 { break }
            }
            stanzas.append(Stanza(arguments: parts.map { String(decoding: $0, as: UTF8.self) }, body: body))
        }
    }
}
