import CLinux
import Glibc
import Handover
import Logging
import SecretsCore

/// A process asking to take this mount over, and how far it got.
struct TakeoverPeer {
    var channel: TakeoverChannel
    var pid: Int32
    /// The version agreed on, once the offer is sent.
    var version: UInt16?
}

/// Takeover by an independent process (`secretsfs mount --take-over`, a DaemonSet's next pod): the whole
/// connection, the `/dev/fuse` open file, fusermount3's sockets, the recorded INIT, the node table, the digest key
/// and the snapshot move to another supervisor, which serves with its own worker and binary. See `TakeoverMessage`.
extension Supervisor {
    // MARK: - The supervisor that hands over

    /// Listens at the config's `[mount] takeover_socket`, if it names one.
    public func listenForTakeovers() {
        guard takeoverListener < 0,
            let path = (try? Config.parse(text: state.configText, file: state.configPath))?.mount.takeoverSocket
        else { return }
        do {
            takeoverListener = try TakeoverChannel.listen(at: path)
            logger.debug("listening for takeovers", metadata: ["socket": "\(path)"])
        } catch {
            logger.error("takeovers are off", metadata: ["error": "\(error)"])
        }
    }

    func pumpTakeover() {
        if takeoverListener >= 0, let channel = TakeoverChannel.accept(takeoverListener) { admit(channel) }
        guard let peer = takeoverPeer else { return }
        switch peer.channel.receive(timeout: 0) {
        case .timedOut:
            return
        case .closed, .invalid:
            logger.warning(
                peer.version == nil
                    ? "a takeover connection closed before it asked anything"
                    : "the takeover was abandoned by the new process; this supervisor keeps serving",
                metadata: ["peer": "\(peer.pid)"])
            peer.channel.close()
            takeoverPeer = nil
        case .message(let message, let descriptors):
            descriptors.forEach { close($0) }
            switch message {
            case .request(let theirs) where peer.version == nil: offer(theirs)
            case .prepared where peer.version != nil: handOver()
            default: refuse("unexpected takeover message")
            }
        }
    }

    /// A new connection: only from this user, one at a time, while a worker serves and no reload is under way.
    private func admit(_ channel: TakeoverChannel) {
        guard let peer = channel.peer(), peer.uid == getuid() else {
            logger.error("takeover refused: the peer runs as another user", metadata: ["uid": "\(channel.peer()?.uid ?? 0)"])
            channel.send(.refused("the peer runs as another user than this supervisor"))
            channel.close()
            return
        }
        let busy = takeoverPeer != nil ? "another takeover is under way" : pending != nil ? "a reload is under way"
            : current == nil ? "no worker serves right now" : nil
        if let busy {
            logger.warning("takeover refused", metadata: ["peer": "\(peer.pid)", "reason": "\(busy)"])
            channel.send(.refused(busy + "; try again"))
            channel.close()
            return
        }
        takeoverPeer = TakeoverPeer(channel: channel, pid: peer.pid, version: nil)
    }

    private func refuse(_ reason: String) {
        guard let peer = takeoverPeer else { return }
        logger.error("takeover refused; this supervisor keeps serving", metadata: ["peer": "\(peer.pid)", "reason": "\(reason)"])
        peer.channel.send(.refused(reason))
        peer.channel.close()
        takeoverPeer = nil
    }

    /// Step 2: the connection and the state, in the newest version both speak (3 or later).
    private func offer(_ theirs: ClosedRange<UInt16>) {
        guard let peer = takeoverPeer else { return }
        guard let version = HandoverProtocol.negotiate(HandoverProtocol.takeover...HandoverProtocol.current, theirs)
        else {
            refuse(
                "the new process speaks handover protocol \(theirs.lowerBound) to \(theirs.upperBound); this supervisor "
                    + "takes over in \(HandoverProtocol.takeover) to \(HandoverProtocol.current)")
            return
        }
        // Without fusermount3's socket the mount would go when this process exits.
        let autoUnmount = (try? Config.parse(text: state.configText, file: state.configPath))?.mount.autoUnmount ?? true
        if autoUnmount && state.unmountSockets.isEmpty {
            refuse(
                "this supervisor does not hold fusermount3's auto_unmount socket by number (it was started by an "
                    + "older release and re-executed); restart it once to enable takeovers")
            return
        }
        var offered = state
        offered.fuseFD = connection.fd
        offered.mountPath = connection.path
        offered.worker = nil
        guard let memfd = offered.memfd(version: version) else {
            refuse("this supervisor cannot write its state")
            return
        }
        defer { close(memfd) }
        let snapshot = state.snapshotFD >= 0 ? [state.snapshotFD] : []
        let descriptors = [memfd, connection.fd] + snapshot + state.unmountSockets
        guard peer.channel.send(
            .offer(version: version, hasSnapshot: !snapshot.isEmpty, unmountSockets: state.unmountSockets.count),
            descriptors: descriptors)
        else {
            refuse("the offer could not be sent")
            return
        }
        takeoverPeer?.version = version
        logger.notice(
            "a process asks to take the mount over; offered the connection, serving until it is ready",
            metadata: ["peer": "\(peer.pid)", "protocol": "\(version)"])
    }

    /// Step 4: the new worker is ready. Retire ours, send the table it left, exit without unmounting.
    private func handOver() {
        guard let peer = takeoverPeer, let version = peer.version else { return }
        takeoverPeer = nil
        // A worker that was starting (after a crash) must not outlive this supervisor either.
        if let starting = pending {
            kill(starting.pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(starting.pid, &status, 0) < 0 && errno == EINTR {}
            starting.channel.close()
            starting.inflight?.release()
            pending = nil
        }
        retireCurrent()
        var final = state
        final.fuseFD = connection.fd
        final.mountPath = connection.path
        final.worker = nil
        if let memfd = final.memfd(version: version) {
            defer { close(memfd) }
            if peer.channel.send(.final, descriptors: [memfd]) {
                if takeoverListener >= 0 { close(takeoverListener) }
                takeoverListener = -1
                peer.channel.close()
                logger.notice(
                    "handed the mount over; exiting without unmounting", metadata: ["to": "\(peer.pid)", "path": "\(connection.path)"])
                handedOver = true
                exitStatus = 0
                return
            }
        }
        // The new process is gone after all: serve again.
        logger.error("the takeover failed at the last step; starting a worker of this supervisor again")
        peer.channel.close()
        restartAt = CoreClock.monotonic()
    }

    // MARK: - The supervisor that takes over

    /// Connects to `socket`, asks for the mount, and returns the supervisor built from what it was offered; its
    /// first worker starts at `run()` and the old supervisor stops its own only once that one is ready.
    public static func takeOver(
        socket: String, configPath: String, configText: String, logLevel: String, logger: Logger,
        connection: (Int32, String) -> SupervisedConnection
    ) throws(SecretsError) -> Supervisor {
        let channel = try TakeoverChannel.connect(to: socket)
        guard channel.send(.request(HandoverProtocol.supported)) else {
            channel.close()
            throw SecretsError(.io, "the takeover request could not be sent to \(socket)")
        }
        let offer: (TakeoverMessage, [Int32])
        switch channel.receive(timeout: 30) {
        case .message(let message, let descriptors): offer = (message, descriptors)
        case .timedOut:
            channel.close()
            throw SecretsError(.timeout, "the running supervisor did not answer the takeover request in 30 s")
        case .closed:
            channel.close()
            throw SecretsError(.io, "the running supervisor closed the takeover connection")
        case .invalid(let error):
            channel.close()
            throw error
        }
        guard case .offer(let version, let hasSnapshot, let sockets) = offer.0,
            offer.1.count == 2 + (hasSnapshot ? 1 : 0) + sockets
        else {
            offer.1.forEach { close($0) }
            channel.close()
            if case .refused(let reason) = offer.0 {
                throw SecretsError(.unsupported, "the running supervisor refused the takeover: \(reason)")
            }
            throw SecretsError(.invalidData, "the running supervisor's offer is not one this binary understands")
        }
        var (state, _) = try SupervisorState.read(memfd: offer.1[0])
        state.fuseFD = offer.1[1]
        state.snapshotFD = hasSnapshot ? offer.1[2] : -1
        // fusermount3's sockets stay open for the life of the mount, inherited by a re-exec.
        state.unmountSockets = offer.1.suffix(sockets).map { fd in
            let moved = fcntl(fd, F_DUPFD, 20)
            guard moved >= 0 else { return fd }
            close(fd)
            return moved
        }
        state.configPath = configPath
        state.configText = configText
        state.logLevel = logLevel
        let supervisor = try Supervisor(state: state, connection: connection(state.fuseFD, state.mountPath), logger: logger)
        supervisor.takingOver = channel
        logger.notice(
            "taking the mount over; starting a worker while the running one serves",
            metadata: ["path": "\(state.mountPath)", "protocol": "\(version)"])
        supervisor.pending = supervisor.spawn(reload: true, configText: configText)
        guard supervisor.pending != nil else {
            channel.close()
            throw SecretsError(.io, "no worker could be started for the takeover; the running supervisor keeps serving")
        }
        supervisor.pending?.tookOver = true
        return supervisor
    }

    /// Our worker is ready: tell the old supervisor, take the table it sends once its worker is gone, serve.
    func completeTakeover() {
        guard let previous = takingOver else { return }
        takingOver = nil
        previous.send(.prepared)
        switch previous.receive(timeout: 30) {
        case .message(.final, let descriptors) where descriptors.count == 1:
            do {
                let (final, _) = try SupervisorState.read(memfd: descriptors[0])
                state.table = final.table
                state.restarts = final.restarts
            } catch {
                logger.error("the previous supervisor's final state is unreadable; serving with its offer", metadata: ["error": "\(error)"])
            }
        default:
            logger.warning("the previous supervisor sent no final table; serving with the one it offered")
        }
        previous.close()
        takeOver()
        listenForTakeovers()
    }
}
