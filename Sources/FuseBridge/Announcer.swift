import CFuse3
import Dispatch
import Glibc
import Locking
import Logging
import SecretsCore

/// Makes inotify watches on directories see changes (`[mount] directory_events`). The kernel tells a directory
/// watch nothing when the daemon drops a name (no FUSE notification does), but it reports what a process does
/// *through* the mount. So after a change, this opens each changed name for writing, sets its mtime and closes it
/// (IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE for the name in its directory; a directory whose listing changed gets its
/// mtime set: IN_MODIFY on it), through the mount point, from one serial queue.
///
/// Never on a FUSE request thread: each of these calls waits for this worker to answer its requests. The daemon
/// admits a write open or a setattr only from the thread doing this, while it does (`admits`); every other
/// caller, this process's other threads included, gets EROFS. Nothing is read or written: one open, one value.
final class Announcer: Sendable {
    let mountPath: String
    let logger: Logger
    let queue = DispatchQueue(label: "secretsfs.announcer")
    /// The thread touching names now (nil: none).
    let touching = Locked<Int32?>(nil)
    /// Names waiting for the queue (changes close together are touched once).
    let pending = Locked<(names: Set<String>, swaps: Set<String>, scheduled: Bool)>(([], [], false))

    init?(mount: MountConfig, logger: Logger) {
        guard mount.directoryEvents else { return nil }
        self.mountPath = mount.path
        self.logger = logger
    }

    /// Whether a request that would change something comes from the touching thread.
    func admits(pid: Int32) -> Bool {
        pid > 0 && touching.withLock { $0 } == pid
    }

    /// The kernel says whether the mount lets changes through (a mount made before directory_events was set, or
    /// by an older release, is read-only: then nothing is touched).
    func mountIsWritable() -> Bool {
        var info = statvfs()
        return statvfs(mountPath, &info) == 0 && info.f_flag & UInt(ST_RDONLY) == 0
    }

    func announce(_ paths: [String], swapping directories: [String]) {
        let schedule = pending.withLock { pending -> Bool in
            pending.names.formUnion(paths)
            pending.swaps.formUnion(directories)
            defer { pending.scheduled = true }
            return !pending.scheduled
        }
        guard schedule else { return }
        queue.async { [self] in
            let (names, swaps) = pending.withLock { pending -> ([String], [String]) in
                defer { pending = ([], [], false) }
                return (pending.names.sorted(), pending.swaps.sorted())
            }
            touch(names, swapping: swaps)
        }
    }

    private func touch(_ names: [String], swapping directories: [String]) {
        guard mountIsWritable() else {
            logger.debug("directory events: the mount is read-only at the kernel, nothing touched")
            return
        }
        touching.withLock { $0 = secretsfs_thread_id() }
        defer { touching.withLock { $0 = nil } }
        var failed = 0
        for name in names {
            let path = mountPath + "/" + name
            // UTIME_OMIT for atime, now for mtime: the kernel reports IN_MODIFY (both would be IN_ATTRIB).
            var times = [
                timespec(tv_sec: 0, tv_nsec: secretsfs_utime_omit()), timespec(tv_sec: 0, tv_nsec: secretsfs_utime_now()),
            ]
            let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
            if fd >= 0 {
                if futimens(fd, &times) != 0 { failed += 1 }
                Glibc.close(fd)
            } else if errno == EISDIR || errno == EACCES {
                // A directory, or a file this uid may not open for writing (not root): its owner may set the mtime.
                if utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) != 0 { failed += 1 }
            } else if errno != ENOENT {
                // ENOENT: the name went away again since.
                failed += 1
            }
        }
        // The kubelet layout: ..data_tmp made, then renamed over ..data (IN_CREATE ..data_tmp, IN_MOVED_FROM
        // ..data_tmp, IN_MOVED_TO ..data), as AtomicWriter does it.
        for directory in directories {
            let base = mountPath + "/" + directory + "/"
            let made = symlink(".", base + DirectoryLayout.dataLinkTemporary)
            if made != 0 && errno != EEXIST {
                failed += 1
                continue
            }
            if rename(base + DirectoryLayout.dataLinkTemporary, base + DirectoryLayout.dataLink) != 0 { failed += 1 }
        }
        if failed > 0 {
            logger.debug("directory events: some names could not be touched", metadata: ["failed": "\(failed)"])
        }
    }
}
