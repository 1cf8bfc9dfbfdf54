import SecretsCore

/// What a worker had cached, for the next worker on the same connection: every env view with when it was fetched
/// (CLOCK_MONOTONIC, the same in every process of one boot) and every env listing. The next worker serves them only
/// as stale values, within `stale_if_error`, while their stores fail; it fetches anew as soon as a store answers.
///
/// The worker encrypts it (ChaCha20-Poly1305 under a key derived from the mount's digest key) into a memfd the
/// supervisor created and passes to every worker but never reads. Layout of the plaintext: `SFSV`, u16 version
/// (1); u64 view count, each: top, env, f64 bits of the fetch time, u64 element count, each: u64 layer count, each:
/// u64 field count, each: name, value; u64 listing count, each: top, f64 bits, u64 env count, each: env. Version 2
/// adds, after the listings, the leased stores' leases: u64 count, each: store, role, lease id ("" for none), bool
/// renewable, f64 bits of duration, renew time and expiry, u64 field count, each: name, value. Version 1 is still
/// read, and written when there are no leases. Strings and byte strings are u64-length-prefixed; values are a tag
/// byte and their content.
public struct ViewSnapshot: Sendable {
    public struct View: Sendable {
        public var key: EnvKey
        public var fetchedAt: Double
        public var view: EnvView

        public init(key: EnvKey, fetchedAt: Double, view: EnvView) {
            self.key = key
            self.fetchedAt = fetchedAt
            self.view = view
        }
    }

    public struct Listing: Sendable, Equatable {
        public var top: String
        public var at: Double
        public var envs: [String]

        public init(top: String, at: Double, envs: [String]) {
            self.top = top
            self.at = at
            self.envs = envs
        }
    }

    public var views: [View]
    public var listings: [Listing]
    public var leases: [CarriedLease] = []

    static let magic: [UInt8] = Array("SFSV".utf8)
    static let version: UInt16 = 2
    /// The oldest layout still read.
    static let oldestVersion: UInt16 = 1
    /// Nesting deeper than this is refused when decoding (tables and arrays in values).
    static let maxDepth = 64

    public init(views: [View] = [], listings: [Listing] = [], leases: [CarriedLease] = []) {
        self.views = views
        self.listings = listings
        self.leases = leases
    }

    /// The plaintext, in a buffer the caller wipes once encrypted.
    public func encoded() -> [UInt8] {
        var writer = HandoverWriter()
        writer.raw(Self.magic)
        // Without leases, version 1: a worker of the previous release (a downgrade) still reads it.
        writer.u16(leases.isEmpty ? Self.oldestVersion : Self.version)
        writer.u64(UInt64(views.count))
        for entry in views {
            writer.string(entry.key.top)
            writer.string(entry.key.env)
            writer.u64(entry.fetchedAt.bitPattern)
            writer.u64(UInt64(entry.view.elements.count))
            for layers in entry.view.elements {
                writer.u64(UInt64(layers.count))
                for fields in layers {
                    writer.u64(UInt64(fields.count))
                    for (name, value) in fields {
                        writer.string(name)
                        Self.write(value, to: &writer)
                    }
                }
            }
        }
        writer.u64(UInt64(listings.count))
        for listing in listings {
            writer.string(listing.top)
            writer.u64(listing.at.bitPattern)
            writer.u64(UInt64(listing.envs.count))
            for env in listing.envs { writer.string(env) }
        }
        if !leases.isEmpty { writer.u64(UInt64(leases.count)) }
        for lease in leases {
            writer.string(lease.store)
            writer.string(lease.role)
            writer.string(lease.id ?? "")
            writer.bool(lease.renewable)
            writer.u64(lease.duration.bitPattern)
            writer.u64(lease.renewAt.bitPattern)
            writer.u64(lease.expires.bitPattern)
            writer.u64(UInt64(lease.fields.count))
            for (name, value) in lease.fields.sorted(by: { $0.key < $1.key }) {
                writer.string(name)
                Self.write(value, to: &writer)
            }
        }
        return writer.output
    }

    public static func decode(_ bytes: [UInt8]) throws(SecretsError) -> ViewSnapshot {
        var reader = HandoverReader(bytes)
        guard reader.skip(prefix: magic) else { throw SecretsError(.invalidData, "not a view snapshot") }
        let layout = try reader.u16()
        guard layout >= oldestVersion, layout <= version else {
            throw SecretsError(.invalidData, "not a view snapshot of a version this binary reads")
        }
        var snapshot = ViewSnapshot()
        for _ in 0..<(try count(&reader)) {
            let key = EnvKey(top: try reader.string(), env: try reader.string())
            let fetchedAt = Double(bitPattern: try reader.u64())
            var elements: [[[String: SecretValue]]] = []
            for _ in 0..<(try count(&reader)) {
                var layers: [[String: SecretValue]] = []
                for _ in 0..<(try count(&reader)) {
                    var fields: [String: SecretValue] = [:]
                    for _ in 0..<(try count(&reader)) {
                        let name = try reader.string()
                        fields[name] = try read(&reader, depth: 0)
                    }
                    layers.append(fields)
                }
                elements.append(layers)
            }
            snapshot.views.append(View(key: key, fetchedAt: fetchedAt, view: EnvView(elements: elements)))
        }
        for _ in 0..<(try count(&reader)) {
            let top = try reader.string()
            let at = Double(bitPattern: try reader.u64())
            var envs: [String] = []
            for _ in 0..<(try count(&reader)) { envs.append(try reader.string()) }
            snapshot.listings.append(Listing(top: top, at: at, envs: envs))
        }
        if layout >= 2 {
            for _ in 0..<(try count(&reader)) {
                let store = try reader.string()
                let role = try reader.string()
                let id = try reader.string()
                let renewable = try reader.bool()
                let duration = Double(bitPattern: try reader.u64())
                let renewAt = Double(bitPattern: try reader.u64())
                let expires = Double(bitPattern: try reader.u64())
                var fields: [String: SecretValue] = [:]
                for _ in 0..<(try count(&reader)) {
                    let name = try reader.string()
                    fields[name] = try read(&reader, depth: 0)
                }
                snapshot.leases.append(
                    CarriedLease(
                        store: store, role: role, id: id.isEmpty ? nil : id, fields: fields, renewable: renewable,
                        duration: duration, renewAt: renewAt, expires: expires))
            }
        }
        try reader.finish()
        return snapshot
    }

    /// A count that cannot exceed the bytes left (each item takes at least one byte).
    static func count(_ reader: inout HandoverReader) throws(SecretsError) -> Int {
        let value = try reader.u64()
        guard value <= UInt64(reader.remaining) else { throw SecretsError(.invalidData, "truncated view snapshot") }
        return Int(value)
    }

    static func write(_ value: SecretValue, to writer: inout HandoverWriter) {
        switch value {
        case .string(let text):
            writer.byte(0)
            writer.string(text)
        case .int(let number):
            writer.byte(1)
            writer.u64(UInt64(bitPattern: number))
        case .float(let number):
            writer.byte(2)
            writer.u64(number.bitPattern)
        case .bool(let flag):
            writer.byte(3)
            writer.bool(flag)
        case .null:
            writer.byte(4)
        case .array(let items):
            writer.byte(5)
            writer.u64(UInt64(items.count))
            for item in items { write(item, to: &writer) }
        case .table(let fields):
            writer.byte(6)
            writer.u64(UInt64(fields.count))
            for (name, item) in fields {
                writer.string(name)
                write(item, to: &writer)
            }
        case .datetime(let text):
            writer.byte(7)
            writer.string(text)
        case .bytes(let raw):
            writer.byte(8)
            writer.bytes(raw)
        }
    }

    static func read(_ reader: inout HandoverReader, depth: Int) throws(SecretsError) -> SecretValue {
        guard depth < maxDepth else { throw SecretsError(.invalidData, "view snapshot nested too deep") }
        switch try reader.byte() {
        case 0: return .string(try reader.string())
        case 1: return .int(Int64(bitPattern: try reader.u64()))
        case 2: return .float(Double(bitPattern: try reader.u64()))
        case 3: return .bool(try reader.bool())
        case 4: return .null
        case 5:
            var items: [SecretValue] = []
            for _ in 0..<(try count(&reader)) { items.append(try read(&reader, depth: depth + 1)) }
            return .array(items)
        case 6:
            var fields: [String: SecretValue] = [:]
            for _ in 0..<(try count(&reader)) {
                let name = try reader.string()
                fields[name] = try read(&reader, depth: depth + 1)
            }
            return .table(fields)
        case 7: return .datetime(try reader.string())
        case 8: return .bytes(try reader.bytes())
        default: throw SecretsError(.invalidData, "unknown value tag in a view snapshot")
        }
    }
}
