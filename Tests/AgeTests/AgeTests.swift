import Foundation
import Testing
import TestSupport

@testable import Age

@Suite("age format")
struct AgeFormatTests {
    @Test("bech32 keys round-trip and reject corruption")
    func keys() throws {
        let identity = X25519Identity.generate()
        let text = identity.secretString
        #expect(text.hasPrefix("AGE-SECRET-KEY-1"))
        let parsed = try X25519Identity(string: text)
        #expect(parsed.recipient == identity.recipient)
        let recipient = identity.recipient.description
        #expect(recipient.hasPrefix("age1"))
        #expect(try X25519Recipient(string: recipient) == identity.recipient)
        var corrupted = Array(recipient)
        corrupted[10] = corrupted[10] == "q" ? "p" : "q"
        #expect(throws: AgeError.self) { try X25519Recipient(string: String(corrupted)) }
        #expect(!identity.description.contains(text))
    }

    @Test("base64 is unpadded and canonical")
    func base64() {
        #expect(Base64.encode(Array("f".utf8)) == "Zg")
        #expect(Base64.encode(Array("fo".utf8)) == "Zm8")
        #expect(Base64.encode(Array("foo".utf8)) == "Zm9v")
        #expect(Base64.decode(Array("Zg".utf8)) == Array("f".utf8))
        #expect(Base64.decode(Array("Zh".utf8)) == nil)  // non-zero trailing bits
        #expect(Base64.decode(Array("Zg==".utf8)) == nil)  // padding
    }

    @Test("round trip at chunk boundaries", arguments: [0, 1, 65535, 65536, 65537, 131072, 200_000])
    func roundTrip(size: Int) throws {
        let identity = X25519Identity.generate()
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let sealed = try AgeFile.encrypt(plaintext, to: [.x25519(identity.recipient)])
        #expect(try AgeFile.decrypt(sealed, identities: [.x25519(identity)]) == plaintext)
    }

    @Test("scrypt passphrase round trip and wrong passphrase")
    func scrypt() throws {
        let plaintext = Array("[default]\nA = 1\n".utf8)
        let sealed = try AgeFile.encrypt(plaintext, to: [.scrypt(passphrase: Array("pass".utf8), workFactor: 10)])
        #expect(
            try AgeFile.decrypt(sealed, identities: [.scrypt(passphrase: Array("pass".utf8), maxWorkFactor: 20)])
                == plaintext)
        #expect(throws: AgeError(.noMatchingIdentity, "no identity matches any recipient of the file")) {
            try AgeFile.decrypt(sealed, identities: [.scrypt(passphrase: Array("wrong".utf8), maxWorkFactor: 20)])
        }
        #expect(throws: AgeError.self) {
            try AgeFile.decrypt(sealed, identities: [.scrypt(passphrase: Array("pass".utf8), maxWorkFactor: 9)])
        }
    }

    @Test("must fail: wrong key, flipped header byte, flipped payload byte, truncation, trailing data")
    func mustFail() throws {
        let identity = X25519Identity.generate()
        let other = X25519Identity.generate()
        let plaintext = Array(repeating: UInt8(ascii: "x"), count: 70_000)
        let sealed = try AgeFile.encrypt(plaintext, to: [.x25519(identity.recipient)])

        #expect(throws: AgeError.self) { try AgeFile.decrypt(sealed, identities: [.x25519(other)]) }

        guard let headerEnd = try? Header.parse(sealed).payloadStart else {
            Issue.record("header did not parse")
            return
        }
        // A flipped byte in a stanza argument or body: either malformed or authentication fails.
        var header = sealed
        header[30] ^= 0x01
        #expect(throws: AgeError.self) { try AgeFile.decrypt(header, identities: [.x25519(identity)]) }

        var payload = sealed
        payload[headerEnd + 40] ^= 0x01
        #expect(throws: AgeError.self) { try AgeFile.decrypt(payload, identities: [.x25519(identity)]) }

        let truncated = Array(sealed.dropLast(1000))
        #expect(throws: AgeError.self) { try AgeFile.decrypt(truncated, identities: [.x25519(identity)]) }

        let cutAtChunk = Array(sealed.prefix(headerEnd + 16 + 65536 + 16))
        #expect(throws: AgeError.self) { try AgeFile.decrypt(cutAtChunk, identities: [.x25519(identity)]) }

        let trailing = sealed + [0]
        #expect(throws: AgeError.self) { try AgeFile.decrypt(trailing, identities: [.x25519(identity)]) }

        #expect(try AgeFile.decrypt(sealed, identities: [.x25519(other), .x25519(identity)]) == plaintext)
    }

    @Test("armor: 64 columns, padding, CRLF and surrounding whitespace accepted; anything else refused")
    func armor() throws {
        let identity = X25519Identity.generate()
        let plaintext = Array("[production]\nPASSWORD = \"armored\"\n".utf8)
        let binary = try AgeFile.encrypt(plaintext, to: [.x25519(identity.recipient)])
        let armored = AgeArmor.encode(binary)
        let text = String(decoding: armored, as: UTF8.self)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.first == "-----BEGIN AGE ENCRYPTED FILE-----" && lines.last == "-----END AGE ENCRYPTED FILE-----")
        #expect(lines.dropFirst().dropLast().dropLast().allSatisfy { $0.count == 64 })
        #expect(try AgeArmor.decode(armored) == binary)
        func open(_ text: String) throws -> [UInt8] {
            try AgeFile.decrypt(Array(text.utf8), identities: [.x25519(identity)])
        }
        #expect(try open(text) == plaintext)
        #expect(try open("\n  \t" + text.replacingOccurrences(of: "\n", with: "\r\n") + " \n\n") == plaintext)
        var body: [String] = Array(lines.dropFirst().dropLast())
        let begin = lines[0]
        let end = lines[lines.count - 1]
        func armor(_ middle: [String]) -> String { ([begin] + middle + [end]).joined(separator: "\n") }
        let shortLine: [String] = [String(body[0].dropLast())] + body.dropFirst()
        let paddedEverywhere: [String] = body.map { $0 + "=" }
        let notBase64: [String] = ["!" + body[0].dropFirst()] + body.dropFirst()
        let refused: [String] = [
            text + "garbage\n",  // trailing data after the end line
            text.replacingOccurrences(of: end, with: ""),  // no end line
            armor(shortLine),  // a line that is not 64 columns
            armor(paddedEverywhere),  // padding before the last line
            armor(notBase64),
            armor([]),  // armor of nothing: no age header inside
        ]
        for bad in refused {
            #expect(throws: AgeError.self) { try open(bad) }
        }
        body[body.count - 1] = String(body[body.count - 1].dropLast(4))
        #expect(throws: AgeError.self) { try open(armor(body)) }  // a truncated last line
    }

    @Test("errors never contain plaintext")
    func errorsAreClean() throws {
        let identity = X25519Identity.generate()
        let secret = "hunter2-not-a-real-secret"
        var sealed = try AgeFile.encrypt(Array(secret.utf8), to: [.x25519(identity.recipient)])
        sealed[sealed.count - 3] ^= 0xFF
        do {
            _ = try AgeFile.decrypt(sealed, identities: [.x25519(identity)])
            Issue.record("tampered file decrypted")
        } catch {
            #expect(!error.description.contains(secret))
        }
    }
}

@Suite("age CLI interop")
struct AgeInteropTests {
    @Test("files made by age (binary and -a armored) decrypt here", arguments: [0, 5, 65536, 100_000], [false, true])
    func fromAgeCLI(size: Int, armored: Bool) throws {
        let age = try requireTool("age")
        let keygen = try requireTool("age-keygen")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let keyFile = dir.file("key.txt")
        let made = try run([keygen, "-o", keyFile])
        #expect(made.status == 0, "age-keygen failed: \(made.stderr)")
        let identities = try X25519Identity.parseFile(String(contentsOfFile: keyFile, encoding: .utf8))
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let encrypted = try run([age] + (armored ? ["-a"] : []) + ["-r", identities[0].recipient.description], input: plaintext)
        #expect(encrypted.status == 0, "age failed: \(encrypted.stderr)")
        #expect(AgeArmor.isArmored(encrypted.stdout) == armored)
        #expect(AgeFile.looksLikeAge(encrypted.stdout))
        #expect(try AgeFile.decrypt(encrypted.stdout, identities: identities.map { .x25519($0) }) == plaintext)
    }

    @Test("files made here (binary and armored) decrypt with age -d", arguments: [0, 5, 65536, 100_000], [false, true])
    func toAgeCLI(size: Int, armored: Bool) throws {
        let age = try requireTool("age")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let identity = X25519Identity.generate()
        let keyFile = try dir.write("key.txt", "# test key\n" + identity.secretString + "\n")
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 13) }
        let binary = try AgeFile.encrypt(plaintext, to: [.x25519(identity.recipient)])
        let sealed = armored ? AgeArmor.encode(binary) : binary
        let decrypted = try run([age, "-d", "-i", keyFile], input: sealed)
        #expect(decrypted.status == 0, "age -d failed: \(decrypted.stderr)")
        #expect(decrypted.stdout == plaintext)
    }

    @Test("age -d refuses a file made here for another key, and a tampered one")
    func ageRefuses() throws {
        let age = try requireTool("age")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let identity = X25519Identity.generate()
        let keyFile = try dir.write("key.txt", identity.secretString + "\n")
        let otherFile = try dir.write("other.txt", X25519Identity.generate().secretString + "\n")
        var sealed = try AgeFile.encrypt(Array("value".utf8), to: [.x25519(identity.recipient)])
        #expect(try run([age, "-d", "-i", otherFile], input: sealed).status != 0)
        sealed[sealed.count - 1] ^= 1
        #expect(try run([age, "-d", "-i", keyFile], input: sealed).status != 0)
    }

    @Test("scrypt files made by age -p decrypt here")
    func scryptFromAge() throws {
        let age = try requireTool("age")
        let python = try requireTool("python3")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let input = try dir.write("plain.txt", "[default]\nTOKEN = \"fake-token\"\n")
        let output = dir.file("plain.txt.age")
        // age reads passphrases from the terminal only: drive it through a pseudo-terminal.
        let driver = """
            import os, pty, sys
            pid, fd = pty.fork()
            if pid == 0:
                os.execv(sys.argv[1], [sys.argv[1], "-p", "-o", sys.argv[3], sys.argv[2]])
            buf = b""
            while True:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                if buf.count(b"passphrase") > buf.count(b"\\x00") and (b"Enter" in buf or b"Confirm" in buf):
                    os.write(fd, b"correct horse\\n")
                    buf = b""
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
            """
        let result = try run([python, "-c", driver, age, input, output], timeout: 60)
        #expect(result.status == 0, "age -p failed: \(result.stderr)")
        let sealed = try [UInt8](Data(contentsOf: URL(fileURLWithPath: output)))
        let plain = try AgeFile.decrypt(sealed, identities: [.scrypt(passphrase: Array("correct horse".utf8), maxWorkFactor: 22)])
        #expect(plain == Array("[default]\nTOKEN = \"fake-token\"\n".utf8))
    }
}
