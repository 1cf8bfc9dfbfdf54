import CFuse3
import Glibc
import SecretsCore

/// The C callback table: one function per operation, each nonisolated, capturing nothing, reaching its state
/// through the request's userdata, and sending exactly one reply. Translation only: every decision is the core's.
enum FuseOperations {
    /// Each entry is a literal closure that captures nothing (a C function pointer) and calls the operation's function.
    static func table(noOpen: Bool) -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { FuseOperations.initialize($0, $1) }
        ops.lookup = { FuseOperations.lookup($0, $1, $2) }
        ops.forget = { FuseOperations.forget($0, $1, $2) }
        ops.forget_multi = { FuseOperations.forgetMulti($0, $1, $2) }
        ops.getattr = { FuseOperations.getattr($0, $1, $2) }
        if noOpen {
            ops.open = { FuseOperations.refuseOpen($0, $1, $2) }
        } else {
            ops.open = { FuseOperations.open($0, $1, $2) }
            ops.release = { FuseOperations.release($0, $1, $2) }
        }
        ops.read = { FuseOperations.read($0, $1, $2, $3, $4) }
        ops.opendir = { FuseOperations.opendir($0, $1, $2) }
        ops.readdir = { FuseOperations.readdir($0, $1, $2, $3, $4) }
        ops.releasedir = { FuseOperations.releasedir($0, $1, $2) }
        ops.getxattr = { FuseOperations.getxattr($0, $1, $2, $3) }
        ops.listxattr = { FuseOperations.listxattr($0, $1, $2) }
        // Everything that would change the tree is refused, even if the mount were made writable.
        // But the daemon's own touch (directory events; see `Announcer`) is answered, changing nothing.
        ops.setattr = { FuseOperations.setattr($0, $1, $2, $3, $4) }
        ops.mknod = { req, _, _, _, _ in FuseOperations.readOnly(req) }
        ops.mkdir = { req, _, _, _ in FuseOperations.readOnly(req) }
        ops.unlink = { req, _, _ in FuseOperations.readOnly(req) }
        ops.rmdir = { req, _, _ in FuseOperations.readOnly(req) }
        // But for the daemon's own ..data swap in a kubelet-layout directory (see `Announcer`).
        ops.symlink = { FuseOperations.symlink($0, $1, $2, $3) }
        ops.rename = { FuseOperations.rename($0, $1, $2, $3, $4, $5) }
        ops.readlink = { FuseOperations.readlink($0, $1) }
        ops.link = { req, _, _, _ in FuseOperations.readOnly(req) }
        ops.write = { req, _, _, _, _, _ in FuseOperations.readOnly(req) }
        ops.create = { req, _, _, _, _ in FuseOperations.readOnly(req) }
        ops.setxattr = { req, _, _, _, _, _ in FuseOperations.readOnly(req) }
        ops.removexattr = { req, _, _ in FuseOperations.readOnly(req) }
        return ops
    }

    static func initialize(_ userdata: UnsafeMutableRawPointer?, _ conn: UnsafeMutablePointer<fuse_conn_info>?) {
        guard let conn else { return }
        // Opens answered ENOSYS make the kernel serve reads from its page cache without asking us.
        if conn.pointee.capable & secretsfs_cap_no_open_support() != 0 {
            conn.pointee.want |= secretsfs_cap_no_open_support()
        }
        // Inodes never change content, so there is nothing for auto-invalidation to do.
        conn.pointee.want &= ~secretsfs_cap_auto_inval_data()
        // O_TRUNC must reach us as a setattr (refused) rather than ride on an open a no_open kernel never sends
        // (on a mount writable for directory events, the kernel would believe the file truncated).
        conn.pointee.want &= ~secretsfs_cap_atomic_o_trunc()
    }

    static func lookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        guard let req, let name else { return }
        let caller = caller(req)
        let key = String(cString: name)
        if let fault = context(req).abortOnLookup, fault == key { abort() }
        do {
            replyEntry(req, try context(req).core.lookup(parent: parent, name: key, caller: caller))
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    /// A name's node and how long the kernel may keep the name and its attributes.
    static func replyEntry(_ req: fuse_req_t, _ entry: EntryReply) {
        var param = fuse_entry_param()
        param.ino = entry.attributes.inode
        param.generation = 0
        param.attr = stat(entry.attributes)
        param.entry_timeout = entry.entryTimeout
        param.attr_timeout = entry.attributeTimeout
        fuse_reply_entry(req, &param)
    }

    static func forget(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ count: UInt64) {
        guard let req else { return }
        context(req).core.forget(ino, count: count)
        fuse_reply_none(req)
    }

    static func forgetMulti(_ req: fuse_req_t?, _ count: Int, _ forgets: UnsafeMutablePointer<fuse_forget_data>?) {
        guard let req else { return }
        let core = context(req).core
        if let forgets {
            for index in 0..<count { core.forget(forgets[index].ino, count: forgets[index].nlookup) }
        }
        fuse_reply_none(req)
    }

    static func getattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req else { return }
        do {
            let (attributes, timeout) = try context(req).core.attributes(ino)
            var info = stat(attributes)
            fuse_reply_attr(req, &info, timeout)
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    /// With no_open, the kernel serves every file from its page cache after one ENOSYS.
    static func refuseOpen(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req else { return }
        fuse_reply_err(req, ENOSYS)
    }

    static func open(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req, let fi else { return }
        let core = context(req).core
        guard core.isFile(ino) else {
            fuse_reply_err(req, core.isDirectory(ino) ? EISDIR : ENOENT)
            return
        }
        // Opens for writing reach here only on a mount made writable for directory events: the daemon's own.
        if fi.pointee.flags & O_ACCMODE != O_RDONLY, !isAnnouncer(req) {
            fuse_reply_err(req, EROFS)
            return
        }
        // The inode's content never changes, so the kernel may keep its pages.
        secretsfs_fi_set_keep_cache(fi, 1)
        secretsfs_fi_set_noflush(fi, 1)
        fuse_reply_open(req, fi)
    }

    static func release(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req else { return }
        fuse_reply_err(req, 0)
    }

    static func read(
        _ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?
    ) {
        guard let req else { return }
        do {
            let bytes = try context(req).core.contents(ino)
            bytes.withUnsafeBytes { buffer in
                let start = min(Int(max(offset, 0)), buffer.count)
                let end = min(start + size, buffer.count)
                let base = buffer.baseAddress.map { $0 + start }?.assumingMemoryBound(to: CChar.self)
                _ = fuse_reply_buf(req, base, end - start)
            }
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    static func opendir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req, let fi else { return }
        let context = context(req)
        do {
            fi.pointee.fh = context.directoryHandles.open(try context.core.listing(ino, caller: caller(req)))
            fuse_reply_open(req, fi)
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    static func readdir(
        _ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?
    ) {
        guard let req, let fi else { return }
        let context = context(req)
        let entries: [DirectoryEntry]
        do {
            entries = try context.directoryHandles.entries(fi.pointee.fh) { () throws(SecretsError) in
                try context.core.listing(ino, caller: caller(req))
            }
        } catch {
            fuse_reply_err(req, error.errno)
            return
        }
        var buffer = [CChar](repeating: 0, count: size)
        var used = 0
        var index = Int(max(offset, 0))
        while index < entries.count {
            let entry = entries[index]
            var info = Glibc.stat()
            info.st_ino = numericCast(entry.inode)
            info.st_mode = entry.isDirectory ? S_IFDIR : S_IFREG
            let needed = buffer.withUnsafeMutableBufferPointer { pointer in
                fuse_add_direntry(req, pointer.baseAddress.map { $0 + used }, size - used, entry.name, &info, off_t(index + 1))
            }
            if needed > size - used { break }
            used += needed
            index += 1
        }
        _ = buffer.withUnsafeBufferPointer { fuse_reply_buf(req, $0.baseAddress, used) }
    }

    static func releasedir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        guard let req else { return }
        if let fi { context(req).directoryHandles.release(fi.pointee.fh) }
        fuse_reply_err(req, 0)
    }

    /// user.secretsfs.source: where a file's value comes from (level, store, env), never the value.
    /// user.secretsfs.version: a version that changes with the value, never the value.
    static func getxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
        guard let req, let name else { return }
        let attribute = String(cString: name)
        if attribute == FileSystemCore.versionAttribute {
            guard let version = context(req).core.version(of: ino) else {
                fuse_reply_err(req, ENODATA)
                return
            }
            replyXattr(req, Array(version.utf8), size: size)
            return
        }
        guard attribute == FileSystemCore.sourceAttribute else {
            fuse_reply_err(req, ENODATA)
            return
        }
        do {
            guard let text = try context(req).core.source(of: ino) else {
                fuse_reply_err(req, ENODATA)
                return
            }
            replyXattr(req, Array(text.utf8), size: size)
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    static func listxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int) {
        guard let req else { return }
        let names = context(req).core.isFile(ino)
            ? Array(FileSystemCore.sourceAttribute.utf8) + [0] + Array(FileSystemCore.versionAttribute.utf8) + [0] : []
        replyXattr(req, names, size: size)
    }

    /// The size asked for (size 0), ERANGE when the caller's buffer is too small, else the bytes.
    static func replyXattr(_ req: fuse_req_t, _ bytes: [UInt8], size: Int) {
        if size == 0 {
            fuse_reply_xattr(req, bytes.count)
        } else if size < bytes.count {
            fuse_reply_err(req, ERANGE)
        } else {
            _ = bytes.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count) }
        }
    }

    /// Refused (EROFS), except the daemon's own touch of a name, which is answered with the node's attributes as
    /// they are: nothing changes, but the kernel reports the touch to inotify watchers (see `Announcer`).
    static func setattr(
        _ req: fuse_req_t?, _ ino: fuse_ino_t, _ attr: UnsafeMutablePointer<Glibc.stat>?, _ toSet: Int32,
        _ fi: UnsafeMutablePointer<fuse_file_info>?
    ) {
        guard let req else { return }
        let touch = FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME
        guard isAnnouncer(req), toSet & ~touch == 0 else {
            fuse_reply_err(req, EROFS)
            return
        }
        getattr(req, ino, fi)
    }

    /// The daemon's own `..data_tmp` (kubelet layout); EROFS for anyone else and anything else.
    static func symlink(
        _ req: fuse_req_t?, _ link: UnsafePointer<CChar>?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?
    ) {
        guard let req else { return }
        guard isAnnouncer(req), let link, let name else {
            fuse_reply_err(req, EROFS)
            return
        }
        do {
            replyEntry(
                req,
                try context(req).core.makeDataLink(
                    parent: parent, name: String(cString: name), target: String(cString: link)))
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    /// The daemon's own `..data_tmp` → `..data` (kubelet layout); EROFS for anyone else and anything else.
    static func rename(
        _ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
        _ newName: UnsafePointer<CChar>?, _ flags: UInt32
    ) {
        guard let req else { return }
        guard isAnnouncer(req), flags == 0, let name, let newName else {
            fuse_reply_err(req, EROFS)
            return
        }
        do {
            try context(req).core.swapDataLink(
                parent: parent, name: String(cString: name), newParent: newParent, newName: String(cString: newName))
            fuse_reply_err(req, 0)
        } catch {
            fuse_reply_err(req, error.errno)
        }
    }

    static func readlink(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
        guard let req else { return }
        guard let target = context(req).core.linkTarget(ino) else {
            fuse_reply_err(req, EINVAL)
            return
        }
        fuse_reply_readlink(req, target)
    }

    /// Whether the request comes from this worker's touching thread (directory events).
    static func isAnnouncer(_ req: fuse_req_t) -> Bool {
        guard let announcer = context(req).announcer, let ctx = fuse_req_ctx(req) else { return false }
        return announcer.admits(pid: ctx.pointee.pid)
    }

    static func readOnly(_ req: fuse_req_t?) {
        if let req { fuse_reply_err(req, EROFS) }
    }

    /// Who asks: the kernel's record of the calling process; nil for the daemon's own touching thread (no access
    /// rules, no audit).
    static func caller(_ req: fuse_req_t) -> Caller? {
        if isAnnouncer(req) { return nil }
        return fuse_req_ctx(req).map { Caller(uid: $0.pointee.uid, gid: $0.pointee.gid, pid: $0.pointee.pid) }
    }

    static func context(_ req: fuse_req_t) -> FuseContext {
        Unmanaged<FuseContext>.fromOpaque(fuse_req_userdata(req)).takeUnretainedValue()
    }

    static func stat(_ attributes: NodeAttributes) -> Glibc.stat {
        var info = Glibc.stat()
        info.st_ino = numericCast(attributes.inode)
        info.st_mode = (attributes.isDirectory ? S_IFDIR : attributes.isSymlink ? S_IFLNK : S_IFREG) | attributes.mode
        info.st_nlink = attributes.isDirectory ? 2 : attributes.detached ? 0 : 1
        info.st_uid = attributes.uid
        info.st_gid = attributes.gid
        info.st_size = off_t(attributes.size)
        info.st_blksize = 4096
        info.st_blocks = blkcnt_t((attributes.size + 511) / 512)
        let time = timespec(tv_sec: attributes.modified.seconds, tv_nsec: attributes.modified.nanoseconds)
        info.st_mtim = time
        info.st_ctim = time
        info.st_atim = time
        return info
    }
}
