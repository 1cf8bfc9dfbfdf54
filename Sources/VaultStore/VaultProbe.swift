import SecretsCore

/// For `make bench`: the raw round trip of a keep-alive GET through the same libcurl client the store uses.
public final class VaultProbe {
    let client: HTTPClient
    let path: String
    let token: String

    public init(address: String, token: String, path: String) {
        client = HTTPClient(settings: .init(timeout: 5, caFile: nil, skipVerify: false, addresses: [address]))
        self.path = path
        self.token = token
    }

    deinit { client.close() }

    /// One GET; its latency in nanoseconds, or nil when it failed.
    public func roundTrip() -> UInt64? {
        let begin = CoreClock.monotonic()
        guard let response = try? client.request("GET", path, headers: ["X-Vault-Token": token]), response.status == 200
        else { return nil }
        return UInt64((CoreClock.monotonic() - begin) * 1e9)
    }
}
