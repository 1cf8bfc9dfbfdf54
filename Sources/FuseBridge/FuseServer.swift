import CFuse3
import Glibc
import Logging
import SecretsCore
import Locking

/// Serves a `FileSystemCore` on a FUSE connection with libfuse's low-level API (a worker's job; `FuseMount` is the
/// supervisor's).
///
/// This module only translates: inode numbers, replies and errno. Every decision is the core's.
public final class FuseServer: Sendable {
    let context: FuseContext

    let inflight: InflightStamps?

    public init(core: FileSystemCore, mount: MountConfig, logger: Logger, inflight: InflightStamps? = nil) {
        self.inflight = inflight
        self.context = FuseContext(core: core, mount: mount, logger: logger)
    }

    /// The `-o` option string for a mount config.
    public static func mountOptions(_ mount: MountConfig) -> String {
        // With directory events the kernel lets changes through to the daemon, which refuses all but its own.
        var options = (mount.directoryEvents ? [] : ["ro"]) + [
            "default_permissions", "fsname=secretsfs", "subtype=secretsfs", "noatime",
        ]
        if mount.allowOther { options.append("allow_other") }
        if mount.autoUnmount { options.append("auto_unmount") }
        return options.joined(separator: ",")
    }

    /// Serves a connection another process mounted: `fd` is the supervisor's `/dev/fuse` open file (shared, not a
    /// clone), `initRequest` the FUSE_INIT the kernel sent once. libfuse is given that request as if it had read it,
    /// so its session is initialized exactly as the first time; only the first worker's reply reaches the kernel, a
    /// later one gets ENOENT, which libfuse ignores. Then every request an earlier worker had read but not answered
    /// is put back in the queue (FUSE_NOTIFY_RESEND), and on a reload every cached name is looked up again
    /// (FUSE_NOTIFY_INC_EPOCH). Returns when the connection ends.
    public func serve(fd: Int32, initRequest: [UInt8], reload: Bool, serving: @Sendable () -> Void) throws(SecretsError) {
        guard FuseProtocol.opcode(of: initRequest) == FuseProtocol.initOpcode else {
            throw SecretsError(.invalidData, "the handed-over first request is not FUSE_INIT")
        }
        let argv = ["secretsfs"]
        let cArgv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (index, argument) in argv.enumerated() { cArgv[index] = strdup(argument) }
        cArgv[argv.count] = nil
        defer {
            for index in 0..<argv.count { free(cArgv[index]) }
            cArgv.deallocate()
        }
        var args = fuse_args(argc: Int32(argv.count), argv: cArgv, allocated: 0)
        defer { fuse_opt_free_args(&args) }

        var ops = FuseOperations.table(noOpen: context.mount.noOpen)
        let userdata = Unmanaged.passRetained(context).toOpaque()
        guard let session = secretsfs_session_new(&args, &ops, userdata) else {
            Unmanaged<FuseContext>.fromOpaque(userdata).release()
            throw SecretsError(.io, "fuse_session_new failed")
        }
        context.session.withLock { $0 = SessionPointer(raw: session) }
        defer {
            context.core.setNotifier(nil)
            context.session.withLock { $0 = nil }
            Unmanaged<FuseContext>.fromOpaque(userdata).release()
        }
        // "/dev/fd/N" tells libfuse the connection is already mounted and open on N.
        guard fuse_session_mount(session, "/dev/fd/\(fd)") == 0 else {
            throw SecretsError(.io, "cannot take over the FUSE connection on fd \(fd)")
        }
        initRequest.withUnsafeBytes { buffer in
            secretsfs_process_raw(session, buffer.baseAddress, buffer.count)
        }
        if let failure = FuseProtocol.notify(fd: fd, code: FuseProtocol.notifyResend) {
            context.logger.warning(
                "the kernel refused FUSE_NOTIFY_RESEND (needs Linux 6.9+): requests a dead worker had read stay unanswered",
                metadata: ["errno": "\(failure)"])
        }
        if reload, let failure = FuseProtocol.notify(fd: fd, code: FuseProtocol.notifyIncEpoch) {
            context.logger.info(
                "the kernel refused FUSE_NOTIFY_INC_EPOCH (needs Linux 6.16+): names keep their timeouts after a reload",
                metadata: ["errno": "\(failure)"])
        }
        context.core.setNotifier(context)
        serving()
        let status = SessionLoop.run(SessionPointer(raw: session), inflight: inflight)
        context.core.setNotifier(nil)
        context.logger.info("connection ended", metadata: ["loop_status": "\(status)"])
        if status < 0 && status != -ENODEV {
            throw SecretsError(.io, "FUSE session loop failed: \(FileIO.errnoText(-status))")
        }
    }
}

/// A pointer to the live session, only used for kernel notifications.
struct SessionPointer: @unchecked Sendable {
    let raw: OpaquePointer
}

/// What the C callbacks reach through `fuse_req_userdata`.
final class FuseContext: Sendable, KernelNotifier {
    let core: FileSystemCore
    let mount: MountConfig
    let logger: Logger
    let session: Locked<SessionPointer?>
    let directoryHandles = DirectoryHandles()
    /// Touches changed names through the mount (`[mount] directory_events`; nil: off).
    let announcer: Announcer?
    /// A fault that exists only in debug builds, for the request-of-death tests: a lookup of this key name aborts
    /// the worker (`SECRETSFS_DEBUG_ABORT_ON_LOOKUP`).
    let abortOnLookup: String?

    init(core: FileSystemCore, mount: MountConfig, logger: Logger) {
        self.core = core
        self.mount = mount
        self.logger = logger
        self.session = Locked(nil)
        self.announcer = Announcer(mount: mount, logger: logger)
        #if DEBUG
            abortOnLookup = getenv("SECRETSFS_DEBUG_ABORT_ON_LOOKUP").map { String(cString: $0) }
        #else
            abortOnLookup = nil
        #endif
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

    func announce(_ paths: [String], swapping directories: [String]) {
        announcer?.announce(paths, swapping: directories)
    }

    func deleteEntry(parent: UInt64, child: UInt64, name: String) {
        guard let session = session.withLock({ $0 }) else { return }
        let result = name.withCString { pointer in
            fuse_lowlevel_notify_delete(session.raw, parent, child, pointer, strlen(pointer))
        }
        // ENOENT: the kernel holds no such name, or the name leads to another node: drop whatever it holds.
        if result != 0 { invalidateEntry(parent: parent, name: name) }
    }
}
