/// CSI volumes: read-only views of one env that serve only one pod's processes (see `CSIVolume`). The CSI node
/// plugin validates and publishes through here; the bind mount itself is its business.
extension FileSystemCore {
    /// What a publish is refused for: the volume attribute at fault, and why.
    public struct VolumeRefusal: Error, Sendable, Equatable {
        public var attribute: String
        public var message: String

        public init(attribute: String, message: String) {
            self.attribute = attribute
            self.message = message
        }
    }

    /// Checks that `volume` names a top, an env of it and, for each key glob, at least one key; then publishes
    /// its view. Returns the view's directory relative to the mount point. Repeated with the same volume, the same.
    public func publish(_ volume: CSIVolume) throws(VolumeRefusal) -> String {
        guard resolver.tops[volume.top] != nil else {
            throw VolumeRefusal(
                attribute: "path", message: "no store or scope '\(volume.top)' (have: \(resolver.topNames.joined(separator: ", ")))")
        }
        let envs: [String]
        do {
            envs = try probe(volume.top)
        } catch {
            throw VolumeRefusal(attribute: "path", message: "cannot list the envs of '\(volume.top)': \(error)")
        }
        guard envs.contains(volume.env) else {
            throw VolumeRefusal(attribute: "path", message: "no env '\(volume.env)' in '\(volume.top)'")
        }
        if !volume.keys.isEmpty {
            let names: [String]
            do {
                names = try reader.views.view(EnvKey(top: volume.top, env: volume.env), now: clock()).view.keys
                    + resolver.rendered.names(top: volume.top, env: volume.env)
            } catch {
                throw VolumeRefusal(attribute: "path", message: "cannot read '\(volume.top)/\(volume.env)': \(error)")
            }
            for pattern in volume.keys where !names.contains(where: Glob(pattern).matches) {
                throw VolumeRefusal(
                    attribute: "keys", message: "'\(pattern)' matches no key in '\(volume.top)/\(volume.env)'")
            }
        }
        let published = inodes.update { table, _, events in table.publish(volume, events: &events) }
        guard published != nil else {
            throw VolumeRefusal(
                attribute: "volume_id",
                message: "volume '\(volume.id)' is already published with other attributes or another target path")
        }
        return CSIVolume.directory + "/" + volume.id
    }

    /// Drops a volume's view (its bind mount must be gone first). False when it was not published.
    @discardableResult
    public func unpublish(_ id: String) -> Bool {
        inodes.update { table, _, events in table.unpublish(id, events: &events) }
    }

    /// The published volumes, by id.
    public var volumes: [String: CSIVolume] { inodes.read { $0.volumes } }

    /// The volume `id`, if `caller` belongs to its pod (nil: the daemon itself); EACCES otherwise (counted and
    /// audited as a denial of `key`, `*` for a listing), ENOENT when it is not published.
    func admit(_ caller: Caller?, to id: String, key: String = "*") throws(SecretsError) -> CSIVolume {
        guard let volume = inodes.read({ $0.volumes[id] }) else {
            throw SecretsError(.notFound, "no CSI volume '\(id)' is published")
        }
        guard let caller else { return volume }
        guard volume.serves(gate.callerDetails(caller.pid)) else {
            let hint = caller.pid == 0 ? " (pid 0: the daemon sees no pids of other pid namespaces; it needs hostPID)" : ""
            throw gate.deny(
                InodeTable.FilePath(top: volume.top, env: volume.env, key: key, view: id), caller: caller, via: "csi",
                "caller uid \(caller.uid) pid \(caller.pid) is not in pod \(volume.pod.namespace)/\(volume.pod.name), "
                    + "the only one volume '\(id)' serves\(hint)")
        }
        return volume
    }
}
