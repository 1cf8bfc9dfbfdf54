import Foundation
import Logging
import SecretsCore
import Locking

/// Logs in once and caches the token; renews a renewable token when about two thirds of its TTL have passed; logs in
/// again (once per failure) when renewal fails or a request is refused. Never logs in per read, never logs a token.
final class TokenManager: Sendable {
    struct State {
        var token: String?
        var issuedAt: Double = 0
        var ttl: Double = 0
        var renewable = false
    }

    let settings: VaultSettings
    let http: HTTPClient
    let store: String
    let logger: Logger
    let clock: @Sendable () -> Double
    private let environment: [String: String]
    private let state: Locked<State>
    /// Serializes logins and renewals so concurrent readers do not each log in.
    private let loginLock: Locked<Void>

    init(settings: VaultSettings, http: HTTPClient, store: String, logger: Logger,
         environment: [String: String] = ProcessInfo.processInfo.environment,
         clock: @escaping @Sendable () -> Double = CoreClock.monotonic) {
        // Only what token auth may read: VAULT_TOKEN / BAO_TOKEN and HOME (for ~/.vault-token).
        self.environment = environment.filter { ["VAULT_TOKEN", "BAO_TOKEN", "HOME"].contains($0.key) }
        self.settings = settings
        self.http = http
        self.store = store
        self.logger = logger
        self.clock = clock
        self.state = Locked(State())
        self.loginLock = Locked(())
    }

    /// The current token, logging in or renewing first when due.
    func token() throws(SecretsError) -> String {
        let now = clock()
        let current = state.withLock { $0 }
        if let token = current.token {
            let due = current.ttl > 0 && now - current.issuedAt >= current.ttl * 2 / 3
            if !due { return token }
            if current.renewable, (try? renew(token)) != nil, let renewed = state.withLock({ $0.token }) {
                return renewed
            }
            if now - current.issuedAt < current.ttl { return token }
        }
        try relogin()
        guard let token = state.withLock({ $0.token }) else {
            throw SecretsError(.permissionDenied, "store '\(store)': no Vault token")
        }
        return token
    }

    func relogin() throws(SecretsError) {
        let result: Result<State, SecretsError> = loginLock.withLock { _ in
            do throws(SecretsError) {
                return .success(try login())
            } catch {
                return .failure(error)
            }
        }
        let fresh = try result.get()
        state.withLock { $0 = fresh }
    }

    private func renew(_ token: String) throws(SecretsError) {
        let response = try http.request(
            "POST", "/v1/auth/token/renew-self", headers: headers(token), body: Array("{}".utf8))
        guard response.status == 200, let auth = Self.auth(response.body) else {
            logger.info("token renewal failed; logging in again", metadata: ["store": "\(store)", "status": "\(response.status)"])
            throw SecretsError(.permissionDenied, "renewal failed")
        }
        let now = clock()
        state.withLock { $0 = State(token: auth.token ?? token, issuedAt: now, ttl: auth.ttl, renewable: auth.renewable) }
        logger.debug("token renewed", metadata: ["store": "\(store)", "ttl": "\(auth.ttl)"])
    }

    private func headers(_ token: String? = nil) -> [String: String] {
        var headers: [String: String] = [:]
        if let token { headers["X-Vault-Token"] = token }
        if let namespace = settings.namespace { headers["X-Vault-Namespace"] = namespace }
        return headers
    }

    /// The login request for the configured method (exposed for tests: no Kubernetes API runs here).
    func loginRequest() throws(SecretsError) -> (path: String, body: SecretValue)? {
        switch settings.auth {
        case .token:
            return nil
        case .appRole(let roleID, let secretIDFile, let mount):
            let secretID = try Self.secretText(secretIDFile, what: "secret_id_file")
            return ("/v1/auth/\(mount)/login", .table(["role_id": .string(roleID), "secret_id": .string(secretID)]))
        case .userpass(let username, let passwordFile, let mount):
            let password = try Self.secretText(passwordFile, what: "password_file")
            return ("/v1/auth/\(mount)/login/\(VaultStore.escape(username))", .table(["password": .string(password)]))
        case .kubernetes(let role, let jwtFile, let mount):
            // The service-account token is mounted 0644 by Kubernetes: read it without the 0600 rule.
            let jwt = String(decoding: try FileIO.read(jwtFile), as: UTF8.self).trimmingWhitespaceAndNewlines()
            return ("/v1/auth/\(mount)/login", .table(["role": .string(role), "jwt": .string(jwt)]))
        }
    }

    private func login() throws(SecretsError) -> State {
        let now = clock()
        guard let (path, body) = try loginRequest() else {
            let token = try tokenFromSources()
            // Learn the token's TTL so it can be renewed in time; a root token has none.
            let response = try http.request("GET", "/v1/auth/token/lookup-self", headers: headers(token))
            if response.status == 403 {
                throw SecretsError(.permissionDenied, "store '\(store)': the Vault token is invalid or expired")
            }
            var ttl = 0.0
            var renewable = false
            if case .table(let root)? = SecretValue.parseJSON(response.body), case .table(let data)? = root["data"] {
                if case .int(let seconds)? = data["ttl"] { ttl = Double(seconds) }
                if case .bool(let flag)? = data["renewable"] { renewable = flag }
            }
            return State(token: token, issuedAt: now, ttl: ttl, renewable: renewable)
        }
        var bytes = Array(body.jsonText().utf8)
        defer { wipe(&bytes) }
        let response = try http.request("POST", path, headers: headers(), body: bytes)
        guard response.status == 200, let auth = Self.auth(response.body), let token = auth.token else {
            throw SecretsError(
                .permissionDenied, "store '\(store)': login at \(path) failed: HTTP \(response.status)")
        }
        logger.info("logged in to Vault", metadata: ["store": "\(store)", "ttl": "\(auth.ttl)"])
        return State(token: token, issuedAt: now, ttl: auth.ttl, renewable: auth.renewable)
    }

    private func tokenFromSources() throws(SecretsError) -> String {
        guard case .token(let file) = settings.auth else { throw SecretsError(.invalidConfig, "not a token store") }
        if let file {
            return try Self.secretText(file, what: "token_file")
        }
        if let token = environment["VAULT_TOKEN"] ?? environment["BAO_TOKEN"], !token.isEmpty { return token }
        let home = environment["HOME"] ?? "/root"
        let path = home + "/.vault-token"
        if (try? FileIO.status(path)) != nil {
            return String(decoding: try FileIO.read(path), as: UTF8.self).trimmingWhitespaceAndNewlines()
        }
        throw SecretsError(
            .permissionDenied, "store '\(store)': no Vault token (token_file, VAULT_TOKEN, BAO_TOKEN or ~/.vault-token)")
    }

    static func secretText(_ path: String, what: String) throws(SecretsError) -> String {
        String(decoding: try FileIO.readPassphrase(path), as: UTF8.self)
    }

    static func auth(_ body: [UInt8]) -> (token: String?, ttl: Double, renewable: Bool)? {
        guard case .table(let root)? = SecretValue.parseJSON(body), case .table(let auth)? = root["auth"] else {
            return nil
        }
        var token: String?
        if case .string(let text)? = auth["client_token"] { token = text }
        var ttl = 0.0
        if case .int(let seconds)? = auth["lease_duration"] { ttl = Double(seconds) }
        var renewable = false
        if case .bool(let flag)? = auth["renewable"] { renewable = flag }
        return (token, ttl, renewable)
    }
}

extension String {
    /// Without Foundation's `CharacterSet` (not safe to use from several threads at once here).
    func trimmingWhitespaceAndNewlines() -> String {
        let start = firstIndex { !$0.isWhitespace } ?? endIndex
        let end = self[start...].lastIndex { !$0.isWhitespace }.map { index(after: $0) } ?? start
        return String(self[start..<end])
    }
}
