import SecretsCore

/// For `make bench`: the raw round trip of a keep-alive GET through the same libcurl client the store uses.
public enum VaultProbe {
    /// Latencies in nanoseconds of GET `path` repeated for `seconds`.
    public static func roundTrips(address: String, token: String, path: String, seconds: Double) -> [UInt64] {
        let client = HTTPClient(settings: .init(timeout: 5, caFile: nil, skipVerify: false))
        defer { client.close() }
        var out: [UInt64] = []
        let end = FileSystemCore.monotonicSeconds() + seconds
        while FileSystemCore.monotonicSeconds() < end {
            let begin = FileSystemCore.monotonicSeconds()
            guard (try? client.request("GET", address + path, headers: ["X-Vault-Token": token])) != nil else { break }
            out.append(UInt64((FileSystemCore.monotonicSeconds() - begin) * 1e9))
        }
        return out
    }
}
