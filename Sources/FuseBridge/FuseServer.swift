import CFuse3
import Glibc
import Logging
import SecretsCore
import Synchronization

/// Mounts a `FileSystemCore` with libfuse's low-level API and serves it until SIGINT or SIGTERM.
///
/// This module only translates: inode numbers, replies and errno. Every decision is the core's.
public final class FuseServer: Sendable {
    let context: FuseContext

    public init(core: FileSystemCore, mount: MountConfig, logger: Logger) {
        self.context = FuseContext(core: core, mount: mount, logger: logger)
    }

    /// The `-o` option string for a mount config.
    public static func mountOptions(_ mount: MountConfig) -> String {
        var options = ["ro", "default_permissions", "fsname=secretsfs", "subtype=secretsfs", "noatime"]
        if mount.allowOther { options.append("allow_other") }
        if mount.autoUnmount { options.append("auto_unmount") }
        return options.joined(separator: ",")
    }

    /// Mounts, serves until a signal, unmounts. Calls `ready` once the mount is in place.
    public func run(ready: @Sendable () -> Void = {}) throws(SecretsError) {
        let mount = context.mount
        try Self.prepareMountpoint(mount.path, logger: context.logger)

        let argv = ["secretsfs", "-o", Self.mountOptions(mount)]
        // fuse_args.argv must live in allocated memory for the whole session.
        let cArgv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (index, argument) in argv.enumerated() { cArgv[index] = strdup(argument) }
        cArgv[argv.count] = nil
        defer {
            for index in 0..<argv.count { free(cArgv[index]) }
            cArgv.deallocate()
        }
        var args = fuse_args(argc: Int32(argv.count), argv: cArgv, allocated: 0)
        defer { fuse_opt_free_args(&args) }

        var ops = FuseOperations.table(noOpen: mount.noOpen)
        let userdata = Unmanaged.passRetained(context).toOpaque()
        guard let session = secretsfs_session_new(&args, &ops, userdata) else {
            Unmanaged<FuseContext>.fromOpaque(userdata).release()
            throw SecretsError(.io, "fuse_session_new failed (bad mount options?)")
        }
        context.session.withLock { $0 = SessionPointer(raw: session) }
        defer {
            context.core.setNotifier(nil)
            context.session.withLock { $0 = nil }
            fuse_session_destroy(session)
            Unmanaged<FuseContext>.fromOpaque(userdata).release()
        }
        // libfuse only handles signals whose disposition is the default; a job started with `&` by a shell has
        // SIGINT ignored, and SIGINT must still unmount cleanly.
        // A parent may also have left them blocked (Foundation's Process does): unblock them.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
            signal(signalNumber, SIG_DFL)
            sigaddset(&stopSignals, signalNumber)
        }
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        guard fuse_set_signal_handlers(session) == 0 else {
            throw SecretsError(.io, "cannot install signal handlers")
        }
        defer { fuse_remove_signal_handlers(session) }
        guard fuse_session_mount(session, mount.path) == 0 else {
            throw SecretsError(.io, "cannot mount at \(mount.path) (see the message above; is /dev/fuse usable?)")
        }
        context.logger.info(
            "mounted", metadata: ["path": "\(mount.path)", "options": "\(Self.mountOptions(mount))"])
        context.core.setNotifier(context)
        ready()
        let status = secretsfs_session_loop_mt(session, 16)
        context.core.setNotifier(nil)
        fuse_session_unmount(session)
        context.logger.info("unmounted", metadata: ["path": "\(mount.path)", "loop_status": "\(status)"])
        if status < 0 {
            throw SecretsError(.io, "FUSE session loop failed: \(FileIO.errnoText(-status))")
        }
    }

    /// Creates the mount point when missing; clears a dead mount left by a killed daemon.
    static func prepareMountpoint(_ path: String, logger: Logger) throws(SecretsError) {
        var info = stat()
        if stat(path, &info) != 0 {
            let code = errno
            if code == ENOTCONN {
                logger.warning("clearing a dead mount left by an earlier daemon", metadata: ["path": "\(path)"])
                _ = runCommand(["/usr/bin/fusermount3", "-u", "-z", path])
            } else if code == ENOENT {
                var built = ""
                for part in path.split(separator: "/") {
                    built += "/" + part
                    _ = mkdir(built, 0o755)
                }
            }
            guard stat(path, &info) == 0 else {
                throw SecretsError(.io, "mount point \(path): \(FileIO.errnoText(errno))")
            }
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SecretsError(.invalidConfig, "mount point \(path) is not a directory")
        }
    }

    static func runCommand(_ argv: [String]) -> Int32 {
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        guard posix_spawn(&pid, argv[0], nil, nil, cArgs, environ) == 0 else { return -1 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return status
    }
}

/// A pointer to the live session, only used for kernel notifications.
struct SessionPointer: @unchecked Sendable {
    let raw: OpaquePointer
}

/// A request handle crossing threads; each request gets exactly one reply.
struct Request: @unchecked Sendable {
    let raw: fuse_req_t
}

/// What the C callbacks reach through `fuse_req_userdata`.
final class FuseContext: Sendable, KernelNotifier {
    let core: FileSystemCore
    let mount: MountConfig
    let logger: Logger
    let session: Mutex<SessionPointer?>
    let directoryHandles: Mutex<(next: UInt64, open: [UInt64: [DirectoryEntry]])>

    init(core: FileSystemCore, mount: MountConfig, logger: Logger) {
        self.core = core
        self.mount = mount
        self.logger = logger
        self.session = Mutex(nil)
        self.directoryHandles = Mutex((1, [:]))
    }

    func invalidateEntry(parent: UInt64, name: String) {
        guard let session = session.withLock({ $0 }) else { return }
        let result = name.withCString { pointer in
            fuse_lowlevel_notify_inval_entry(session.raw, parent, pointer, strlen(pointer))
        }
        // ENOENT only means the kernel no longer holds that name.
        if result != 0 && result != -ENOENT {
            logger.debug("entry invalidation failed", metadata: ["parent": "\(parent)", "errno": "\(-result)"])
        }
    }
}
