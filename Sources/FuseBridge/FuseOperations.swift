import CFuse3
import Glibc
import SecretsCore

/// The C callback table. Each function is nonisolated, captures nothing, reaches its state through the request's
/// userdata, and sends exactly one reply.
enum FuseOperations {
    static func table(noOpen: Bool) -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let conn else { return }
            // Opens answered ENOSYS make the kernel serve reads from its page cache without asking us.
            if conn.pointee.capable & secretsfs_cap_no_open_support() != 0 {
                conn.pointee.want |= secretsfs_cap_no_open_support()
            }
            // Inodes never change content, so there is nothing for auto-invalidation to do.
            conn.pointee.want &= ~secretsfs_cap_auto_inval_data()
        }
        ops.lookup = { req, parent, name in
            guard let req, let name else { return }
            let context = FuseOperations.context(req)
            let key = String(cString: name)
            // Who walks the path: the kernel's record of the calling process.
            let caller = fuse_req_ctx(req).map { Caller(uid: $0.pointee.uid, gid: $0.pointee.gid, pid: $0.pointee.pid) }
            do {
                let entry = try context.core.lookup(parent: parent, name: key, caller: caller)
                var param = fuse_entry_param()
                param.ino = entry.attributes.inode
                param.generation = 0
                param.attr = FuseOperations.stat(entry.attributes)
                param.entry_timeout = entry.entryTimeout
                param.attr_timeout = entry.attributeTimeout
                fuse_reply_entry(req, &param)
            } catch {
                fuse_reply_err(req, SecretsError.errno(for: error))
            }
        }
        ops.forget = { req, ino, count in
            guard let req else { return }
            FuseOperations.context(req).core.forget(ino, count: count)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, forgets in
            guard let req else { return }
            let core = FuseOperations.context(req).core
            if let forgets {
                for index in 0..<count {
                    core.forget(forgets[index].ino, count: forgets[index].nlookup)
                }
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in
            guard let req else { return }
            do {
                let (attributes, timeout) = try FuseOperations.context(req).core.attributes(ino)
                var info = FuseOperations.stat(attributes)
                fuse_reply_attr(req, &info, timeout)
            } catch {
                fuse_reply_err(req, SecretsError.errno(for: error))
            }
        }
        if noOpen {
            ops.open = { req, _, _ in
                guard let req else { return }
                fuse_reply_err(req, ENOSYS)
            }
        } else {
            ops.open = { req, ino, fi in
                guard let req, let fi else { return }
                let core = FuseOperations.context(req).core
                guard core.isFile(ino) else {
                    fuse_reply_err(req, core.isDirectory(ino) ? EISDIR : ENOENT)
                    return
                }
                // The inode's content never changes, so the kernel may keep its pages.
                secretsfs_fi_set_keep_cache(fi, 1)
                secretsfs_fi_set_noflush(fi, 1)
                fuse_reply_open(req, fi)
            }
            ops.release = { req, _, _ in
                guard let req else { return }
                fuse_reply_err(req, 0)
            }
        }
        ops.read = { req, ino, size, offset, _ in
            guard let req else { return }
            do {
                let bytes = try FuseOperations.context(req).core.contents(ino)
                bytes.withUnsafeBytes { buffer in
                    let start = min(Int(max(offset, 0)), buffer.count)
                    let end = min(start + size, buffer.count)
                    _ = fuse_reply_buf(req, buffer.baseAddress.map { $0 + start }?.assumingMemoryBound(to: CChar.self), end - start)
                }
            } catch {
                fuse_reply_err(req, SecretsError.errno(for: error))
            }
        }
        ops.opendir = { req, ino, fi in
            guard let req, let fi else { return }
            let context = FuseOperations.context(req)
            do {
                // One listing per open directory handle, so paging through it sees one consistent snapshot.
                let all = try FuseOperations.listing(context, ino)
                let handle = context.directoryHandles.withLock { state -> UInt64 in
                    let handle = state.next
                    state.next += 1
                    state.open[handle] = all
                    return handle
                }
                fi.pointee.fh = handle
                fuse_reply_open(req, fi)
            } catch {
                fuse_reply_err(req, SecretsError.errno(for: error))
            }
        }
        ops.readdir = { req, ino, size, offset, fi in
            guard let req, let fi else { return }
            let context = FuseOperations.context(req)
            let handle = fi.pointee.fh
            let entries: [DirectoryEntry]
            if let kept = context.directoryHandles.withLock({ $0.open[handle] }) {
                entries = kept
            } else {
                // A handle an earlier worker opened: list again and keep it under that handle.
                do {
                    entries = try FuseOperations.listing(context, ino)
                } catch {
                    fuse_reply_err(req, SecretsError.errno(for: error))
                    return
                }
                context.directoryHandles.withLock { $0.open[handle] = entries }
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
        ops.releasedir = { req, _, fi in
            guard let req else { return }
            if let fi {
                let handle = fi.pointee.fh
                _ = FuseOperations.context(req).directoryHandles.withLock { $0.open.removeValue(forKey: handle) }
            }
            fuse_reply_err(req, 0)
        }
        // user.secretsfs.source: where a file's value comes from (level, store, env), never the value.
        ops.getxattr = { req, ino, name, size in
            guard let req, let name else { return }
            let context = FuseOperations.context(req)
            guard String(cString: name) == FileSystemCore.sourceAttribute else {
                fuse_reply_err(req, ENODATA)
                return
            }
            do {
                guard let text = try context.core.source(of: ino) else {
                    fuse_reply_err(req, ENODATA)
                    return
                }
                let bytes = Array(text.utf8)
                if size == 0 {
                    fuse_reply_xattr(req, bytes.count)
                } else if size < bytes.count {
                    fuse_reply_err(req, ERANGE)
                } else {
                    _ = bytes.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count) }
                }
            } catch {
                fuse_reply_err(req, SecretsError.errno(for: error))
            }
        }
        ops.listxattr = { req, ino, size in
            guard let req else { return }
            let context = FuseOperations.context(req)
            let names: [UInt8] = context.core.isFile(ino) ? Array(FileSystemCore.sourceAttribute.utf8) + [0] : []
            if size == 0 {
                fuse_reply_xattr(req, names.count)
            } else if size < names.count {
                fuse_reply_err(req, ERANGE)
            } else {
                _ = names.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), names.count) }
            }
        }
        // Everything that would change the tree is refused, even if the mount were made writable.
        ops.setattr = { req, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.mknod = { req, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.mkdir = { req, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.unlink = { req, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.rmdir = { req, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.symlink = { req, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.rename = { req, _, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.link = { req, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.write = { req, _, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.create = { req, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.setxattr = { req, _, _, _, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        ops.removexattr = { req, _, _ in if let req { fuse_reply_err(req, EROFS) } }
        return ops
    }

    static func listing(_ context: FuseContext, _ ino: UInt64) throws(SecretsError) -> [DirectoryEntry] {
        let entries = try context.core.list(ino)
        let parent = context.core.parent(of: ino)
        return [
            DirectoryEntry(name: ".", inode: ino, isDirectory: true),
            DirectoryEntry(name: "..", inode: parent, isDirectory: true),
        ] + entries
    }

    static func context(_ req: fuse_req_t) -> FuseContext {
        Unmanaged<FuseContext>.fromOpaque(fuse_req_userdata(req)).takeUnretainedValue()
    }

    static func stat(_ attributes: NodeAttributes) -> Glibc.stat {
        var info = Glibc.stat()
        info.st_ino = numericCast(attributes.inode)
        info.st_mode = (attributes.isDirectory ? S_IFDIR : S_IFREG) | attributes.mode
        info.st_nlink = attributes.isDirectory ? 2 : 1
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
