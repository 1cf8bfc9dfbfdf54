import Glibc

/// Small POSIX file helpers. Errors name the path and the system's reason, never the content.
public enum FileIO {
    /// `path` itself when absolute, else taken relative to `directory`.
    public static func absolute(_ path: String, in directory: String) -> String {
        path.hasPrefix("/") ? path : directory + "/" + path
    }

    public struct Status: Sendable, Equatable {
        public var device: UInt64
        public var inode: UInt64
        public var size: Int64
        public var mode: UInt32
        public var uid: UInt32
        public var modified: Int64
        public var changed: Int64
    }

    public static func errnoText(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// Creates `path` and every missing parent with `mode` (`mkdir -p`); existing ones are left as they are.
    public static func makeDirectories(_ path: String, mode: mode_t) throws(SecretsError) {
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, mode) != 0 && errno != EEXIST {
                throw SecretsError(.io, "creating '\(built)' failed: \(errnoText(errno))")
            }
        }
    }

    public static func status(_ path: String) throws(SecretsError) -> Status {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            throw SecretsError(code == ENOENT ? .notFound : .io, "\(path): \(errnoText(code))")
        }
        return Status(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            mode: UInt32(info.st_mode), uid: info.st_uid,
            modified: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            changed: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec))
    }

    /// Reads a whole file. A file larger than `limit` is an error rather than a memory blow-up.
    public static func read(_ path: String, limit: Int = 64 << 20) throws(SecretsError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw SecretsError(code == ENOENT ? .notFound : .io, "\(path): \(errnoText(code))")
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SecretsError(.io, "\(path): \(errnoText(errno))")
            }
            if count == 0 { break }
            out.append(contentsOf: chunk[0..<count])
            if out.count > limit {
                throw SecretsError(.invalidData, "\(path): larger than \(limit) bytes")
            }
        }
        wipe(&chunk)
        return out
    }

    public static func readText(_ path: String) throws(SecretsError) -> String {
        let bytes = try read(path)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw SecretsError(.invalidData, "\(path): not valid UTF-8")
        }
        return text
    }

    /// Writes a file atomically: a temporary file beside it with `mode`, fsync, rename over the target, then fsync
    /// of the folder (so the rename itself survives a crash).
    public static func writeAtomically(_ path: String, bytes: [UInt8], mode: mode_t = 0o600) throws(SecretsError) {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw SecretsError(.io, "\(temporary): \(errnoText(errno))") }
        fchmod(fd, mode)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress?.advanced(by: offset), $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                let reason = errnoText(errno)
                close(fd)
                unlink(temporary)
                throw SecretsError(.io, "\(temporary): \(reason)")
            }
            offset += written
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            let reason = errnoText(errno)
            unlink(temporary)
            throw SecretsError(.io, "\(path): \(reason)")
        }
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let folder = open(parent.isEmpty ? "/" : parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            fsync(folder)
            close(folder)
        }
    }

    /// Reads a passphrase file (which must be private), without its trailing newline.
    public static func readPassphrase(_ path: String) throws(SecretsError) -> [UInt8] {
        try requirePrivate(path, what: "passphrase file")
        var passphrase = try read(path)
        while let last = passphrase.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") {
            passphrase.removeLast()
        }
        return passphrase
    }

    /// Refuses a file that other users could read or that belongs to someone other than this process's user.
    public static func requirePrivate(_ path: String, what: String) throws(SecretsError) {
        let info = try status(path)
        if info.mode & 0o077 != 0 {
            throw SecretsError(
                .insecureFile,
                "\(what) \(path) has mode \(String(info.mode & 0o777, radix: 8)); it must be 0600 or stricter "
                    + "(chmod 600 \(path))")
        }
        if info.uid != geteuid() {
            throw SecretsError(
                .insecureFile, "\(what) \(path) is owned by uid \(info.uid), not by this process's uid \(geteuid())")
        }
    }
}
