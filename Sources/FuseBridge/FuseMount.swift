import CFuse3
import Glibc
import Logging
import SecretsCore

/// The supervisor's side of a FUSE connection: mount, keep the `/dev/fuse` open file, read the one FUSE_INIT the
/// kernel sends, unmount. It never answers a request; workers do (`FuseServer.serve`).
public struct FuseMount: Sendable {
    /// The open `/dev/fuse` file the mount belongs to; not close-on-exec, so workers and a re-executed supervisor
    /// inherit it.
    public let fd: Int32
    public let path: String
    /// fusermount3's auto_unmount sockets, held without close-on-exec (see `mount`).
    public var unmountSockets: [Int32] = []

    public init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Mounts `mount.path` and returns the connection with the kernel's FUSE_INIT request, read and kept unanswered.
    public static func mount(_ mount: MountConfig, logger: Logger) throws(SecretsError) -> (FuseMount, [UInt8]) {
        try prepareMountpoint(mount.path, logger: logger)
        let argv = ["secretsfs", "-o", FuseServer.mountOptions(mount)]
        // libfuse keeps pointers into argv for the life of the session, which is the life of this process.
        let cArgv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (index, argument) in argv.enumerated() { cArgv[index] = strdup(argument) }
        cArgv[argv.count] = nil
        var args = fuse_args(argc: Int32(argv.count), argv: cArgv, allocated: 0)
        var ops = fuse_lowlevel_ops()
        // The session only mounts; it is never destroyed (that would close the connection), the process exits.
        guard let session = secretsfs_session_new(&args, &ops, nil) else {
            throw SecretsError(.io, "fuse_session_new failed (bad mount options?)")
        }
        let socketsBefore = socketDescriptors()
        // fusermount3 (forked by libfuse here) gets none of this process's inherited descriptors.
        let status = ProcessHardening.withoutInheritance { fuse_session_mount(session, mount.path) }
        guard status == 0 else {
            throw SecretsError(.io, "cannot mount at \(mount.path) (see the message above; is /dev/fuse usable?)")
        }
        // With auto_unmount, fusermount3 stays behind and unmounts once its socket to us closes and the connection
        // is dead. Workers and a re-executed supervisor must hold that socket too, or it would close while a worker
        // still serves (and fusermount3 would leave without unmounting).
        // It moves above the numbers workers get theirs at (3 and 4), without close-on-exec.
        var unmountSockets: [Int32] = []
        for fd in socketDescriptors().subtracting(socketsBefore).sorted() {
            if fd >= 20 {
                _ = fcntl(fd, F_SETFD, 0)
                unmountSockets.append(fd)
            } else {
                let moved = fcntl(fd, F_DUPFD, 20)
                if moved >= 0 {
                    close(fd)
                    unmountSockets.append(moved)
                }
            }
        }
        let sessionFD = fuse_session_fd(session)
        // A number of our own above the ones given to workers (3 and 4); workers get it by dup2.
        let fd = fcntl(sessionFD, F_DUPFD_CLOEXEC, 10)
        guard fd >= 0 else { throw SecretsError(.io, "cannot duplicate the FUSE descriptor: \(FileIO.errnoText(errno))") }
        let request = try FuseProtocol.readRequest(fd: fd)
        guard FuseProtocol.opcode(of: request) == FuseProtocol.initOpcode else {
            throw SecretsError(.io, "the kernel's first FUSE request is not FUSE_INIT")
        }
        logger.info("mounted", metadata: ["path": "\(mount.path)", "options": "\(FuseServer.mountOptions(mount))"])
        var mounted = FuseMount(fd: fd, path: mount.path)
        mounted.unmountSockets = unmountSockets
        return (mounted, request)
    }

    /// The open descriptors of this process that are sockets.
    static func socketDescriptors() -> Set<Int32> {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        var found: Set<Int32> = []
        var target = [CChar](repeating: 0, count: 64)
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            guard let fd = Int32(name) else { continue }
            let count = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
            guard count > 0 else { continue }
            let link = String(decoding: target[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if link.hasPrefix("socket:") { found.insert(fd) }
        }
        return found
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
                // A failure shows in the stat below.
                try? FileIO.makeDirectories(path, mode: 0o755)
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

    /// Detaches the mount (readers still inside get errors, new lookups see the folder below).
    public func unmount() {
        if umount2(path, Int32(MNT_DETACH)) != 0 {
            _ = Self.runCommand(["/usr/bin/fusermount3", "-u", "-z", path])
        }
    }
}

/// The few wire facts secretsfs needs beyond libfuse: the request header, FUSE_INIT's opcode and two notify codes
/// that libfuse 3.14 and Debian 12's headers predate.
public enum FuseProtocol {
    public static let initOpcode: UInt32 = 26
    /// FUSE_NOTIFY_RESEND (Linux 6.9): every request read but not answered goes back in the queue.
    public static let notifyResend: Int32 = 7
    /// FUSE_NOTIFY_INC_EPOCH (Linux 6.16): every cached name is looked up again on its next use.
    public static let notifyIncEpoch: Int32 = 8
    /// Large enough for any request with a 1 MiB max_write (the kernel refuses smaller reads).
    static let readBufferSize = 1 << 20 + 8192

    /// `fuse_in_header`: len u32, opcode u32, unique u64, ...
    public static func opcode(of request: [UInt8]) -> UInt32? {
        guard request.count >= 40 else { return nil }
        return UInt32(request[4]) | UInt32(request[5]) << 8 | UInt32(request[6]) << 16 | UInt32(request[7]) << 24
    }

    /// Reads one request from the device, retrying on EINTR.
    static func readRequest(fd: Int32) throws(SecretsError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: readBufferSize)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count > 0 { return Array(buffer[0..<count]) }
            if count < 0 && errno == EINTR { continue }
            throw SecretsError(.io, "reading the FUSE device failed: \(FileIO.errnoText(errno))")
        }
    }

    /// Writes a bare notification (`fuse_out_header` with `unique` 0 and the code in `error`); errno on failure.
    public static func notify(fd: Int32, code: Int32) -> Int32? {
        var header = [UInt8](repeating: 0, count: 16)
        header[0] = 16
        withUnsafeBytes(of: code.littleEndian) { for index in 0..<4 { header[4 + index] = $0[index] } }
        let written = header.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return written == 16 ? nil : errno
    }
}
