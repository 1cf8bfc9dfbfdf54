import CLinux
import Logging
import SecretsCore

#if canImport(Glibc)
import Glibc
#endif

/// The bind mounts of published views at kubelet's target paths. Every call is idempotent: a target already bound
/// to its view is left as it is; one already gone is fine.
struct VolumeMounts: Sendable {
    let mountPath: String
    let logger: Logger

    struct MountError: Error, CustomStringConvertible {
        var description: String
    }

    /// Binds `<mount>/<source>` read-only at `target`, creating the target directory (0750) and its parents.
    func bind(_ source: String, at target: String) throws(MountError) {
        let from = mountPath + "/" + source
        if let root = mountRoot(of: target) {
            // Already this view (a repeated publish), or something else in the way.
            guard root == "/" + source else {
                throw MountError(description: "target_path '\(target)' already has another mount (\(root))")
            }
            return
        }
        do {
            try FileIO.makeDirectories(target, mode: 0o750)
        } catch {
            throw MountError(description: "\(error)")
        }
        guard secretsfs_bind_readonly(from, target) == 0 else {
            let code = errno
            // A bind that succeeded before its remount failed must not stay writable or behind.
            if mountRoot(of: target) != nil { _ = secretsfs_unmount(target, 1) }
            throw MountError(description: "bind-mounting the view at '\(target)' failed: \(FileIO.errnoText(code))")
        }
    }

    /// Unmounts `target` (lazily when busy) and removes the directory.
    func unbind(_ target: String) throws(MountError) {
        while mountRoot(of: target) != nil {
            if secretsfs_unmount(target, 0) != 0 {
                let code = errno
                guard code == EBUSY, secretsfs_unmount(target, 1) == 0 else {
                    throw MountError(description: "unmounting '\(target)' failed: \(FileIO.errnoText(code))")
                }
                logger.notice("the volume's target was busy; detached it", metadata: ["target": "\(target)"])
            }
        }
        if rmdir(target) != 0 && errno != ENOENT {
            let code = errno
            throw MountError(description: "removing '\(target)' failed: \(FileIO.errnoText(code))")
        }
    }

    func isMounted(_ target: String) -> Bool { mountRoot(of: target) != nil }

    /// The root (within its filesystem) of the mount at exactly `path`, from /proc/self/mountinfo; nil if none.
    /// Read from the table rather than by stat, which would wait on a hung filesystem.
    func mountRoot(of path: String) -> String? {
        guard let text = try? FileIO.readText("/proc/self/mountinfo") else { return nil }
        var found: String?
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, Self.unescape(fields[4]) == path else { continue }
            found = Self.unescape(fields[3])
        }
        return found
    }

    /// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
    static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.first {
            utf8 = utf8.dropFirst()
            if byte == 0x5c, utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
