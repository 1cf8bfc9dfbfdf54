import Dispatch

/// What Dapr's secrets API asks of the mount, shared by the HTTP and gRPC front ends: the token, the store names,
/// `allowed`/`denied`, the env of a request, and the values, read by the mount's own rules (fresh keys fetched now,
/// the others from the cached view of their env). Front ends only map `SecretsAPIError` to their status codes.
public struct SecretsAPI: Sendable {
    public let config: ApiConfig
    public let core: FileSystemCore
    let token: String?

    public init(config: ApiConfig, core: FileSystemCore, token: String?) {
        self.config = config
        self.core = core
        self.token = token
    }

    /// Whether a request carrying `given` (its `dapr-api-token`) may be served.
    public func authorizes(_ given: String?) -> Bool {
        guard let token else { return true }
        guard let given else { return false }
        return constantTimeEqual(Array(given.utf8), Array(token.utf8))
    }

    /// The env a request reads: its `env` metadata, else the configured one.
    public func env(_ metadata: [String: String]) -> String {
        (metadata["env"] ?? config.env).lowercased()
    }

    /// One secret as text: the bytes its file would read.
    public func secret(store: String, name: String, metadata: [String: String]) throws(SecretsAPIError) -> String {
        guard core.resolver.tops[store] != nil else { throw .storeNotFound(store) }
        guard config.permits(store: store, name: name) else { throw .forbidden(store: store, name: name) }
        let env = env(metadata)
        guard EntryName.isValid(name), EntryName.isValid(env) else { throw .notFound(store: store, name: name, env: env) }
        let bytes: SecretBytes
        do {
            bytes = try core.apiRead(top: store, env: env, key: name)
        } catch where error.code == .notFound {
            throw .notFound(store: store, name: name, env: env)
        } catch {
            throw .failed(error)
        }
        guard let text = bytes.utf8String() else { throw .notText(name: name) }
        return text
    }

    /// Every permitted secret of the env, from one view of it, sorted by name.
    public func bulk(store: String, metadata: [String: String]) throws(SecretsAPIError) -> [(name: String, value: String)] {
        guard core.resolver.tops[store] != nil else { throw .storeNotFound(store) }
        let env = env(metadata)
        guard EntryName.isValid(env) else { return [] }
        let entries: [(String, SecretBytes)]
        do {
            entries = try core.apiList(top: store, env: env)
        } catch where error.code == .notFound {
            return []
        } catch {
            throw .failed(error)
        }
        var out: [(name: String, value: String)] = []
        for (name, bytes) in entries where config.permits(store: store, name: name) {
            guard let text = bytes.utf8String() else { throw .notText(name: name) }
            out.append((name, text))
        }
        return out
    }
}

extension SecretsAPI {
    /// Runs a request, which may wait on a backend up to its timeout, on a Dispatch thread rather than on Swift's
    /// cooperative pool (as many threads as cores), so slow backends do not stall the listeners.
    public static func offload<T: Sendable>(
        _ body: @escaping @Sendable () throws(SecretsAPIError) -> T
    ) async -> Result<T, SecretsAPIError> {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                do throws(SecretsAPIError) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
    }
}

/// Why the secrets API refused or failed a request. Messages name stores, keys and envs, never a value.
public enum SecretsAPIError: Error, CustomStringConvertible, Sendable {
    case storeNotFound(String)
    case forbidden(store: String, name: String)
    case notFound(store: String, name: String, env: String)
    case notText(name: String)
    case failed(SecretsError)

    /// Dapr's error code for it.
    public var daprCode: String {
        switch self {
        case .storeNotFound: "ERR_SECRET_STORE_NOT_FOUND"
        case .forbidden: "ERR_PERMISSION_DENIED"
        case .notFound, .notText, .failed: "ERR_SECRET_GET"
        }
    }

    public var description: String {
        switch self {
        case .storeNotFound(let store): "secret store \(store) not found"
        case .forbidden(let store, let name): "access denied by policy to get \(name) from \(store)"
        case .notFound(let store, let name, let env): "secret \(name) not found in \(store)/\(env)"
        case .notText(let name): "the value of \(name) is not UTF-8 text; the secrets API carries text only"
        case .failed(let error): "failed getting secret: \(error)"
        }
    }
}
