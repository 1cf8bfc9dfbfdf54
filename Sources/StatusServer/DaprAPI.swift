import Hummingbird
import Logging
import SecretsCore

/// Dapr's secrets API over HTTP, on the same resolver as the mount: `GET /v1.0/secrets/<store>/<name>`,
/// `GET /v1.0/secrets/<store>/bulk`, `GET /v1.0/healthz` and `/v1.0/healthz/outbound` (what the SDKs wait on).
/// Store names are the mount's top-level names; values are the bytes a file would read, as UTF-8 strings. Every
/// read goes to the stores (fresh); a bulk answer is one view of the env.
public enum DaprAPI {
    public static func start(api: ApiConfig, resolver: Resolver, token: String?, logger: Logger) {
        let router = Router()
        @Sendable func denied(_ request: Request) -> Response? {
            guard let token else { return nil }
            let given = request.headers.first { $0.name.canonicalName == "dapr-api-token" }?.value
            return given == token ? nil : failure(.unauthorized, "ERR_API_TOKEN", "a valid dapr-api-token is required")
        }
        router.get("/v1.0/healthz") { request, _ -> Response in denied(request) ?? Response(status: .noContent) }
        router.get("/v1.0/healthz/outbound") { request, _ -> Response in denied(request) ?? Response(status: .noContent) }
        router.get("/v1.0/secrets/:store/bulk") { request, context -> Response in
            if let refusal = denied(request) { return refusal }
            let store = context.parameters.get("store") ?? ""
            guard resolver.tops[store] != nil else {
                return failure(.badRequest, "ERR_SECRET_STORE_NOT_FOUND", "no secret store named \(store)")
            }
            let env = request.uri.queryParameters.get("metadata.env") ?? api.env
            do {
                let view = try resolver.view(top: store, env: env.lowercased())
                var entries: [String] = []
                for key in view.keys where api.permits(store: store, name: key) && EntryName.isValid(key) {
                    guard let value = view.value(of: key), let text = value.fileBytes().utf8String() else {
                        return failure(.internalServerError, "ERR_SECRET_GET", "the value of \(key) is not UTF-8 text")
                    }
                    entries.append("\(AuditEntry.quoted(key)):{\(AuditEntry.quoted(key)):\(AuditEntry.quoted(text))}")
                }
                return json("{" + entries.joined(separator: ",") + "}")
            } catch {
                return failure(.internalServerError, "ERR_SECRET_GET", "\(error)")
            }
        }
        router.get("/v1.0/secrets/:store/:name") { request, context -> Response in
            if let refusal = denied(request) { return refusal }
            let store = context.parameters.get("store") ?? ""
            let name = context.parameters.get("name") ?? ""
            guard resolver.tops[store] != nil else {
                return failure(.badRequest, "ERR_SECRET_STORE_NOT_FOUND", "no secret store named \(store)")
            }
            guard api.permits(store: store, name: name) else {
                return failure(.forbidden, "ERR_PERMISSION_DENIED", "access denied by policy to get \(name) from \(store)")
            }
            let env = (request.uri.queryParameters.get("metadata.env") ?? api.env).lowercased()
            do {
                guard EntryName.isValid(name), let value = try resolver.resolve(top: store, env: env, key: name) else {
                    return failure(.notFound, "ERR_SECRET_GET", "secret \(name) not found in \(store)/\(env)")
                }
                guard let text = value.fileBytes().utf8String() else {
                    return failure(.internalServerError, "ERR_SECRET_GET", "the value of \(name) is not UTF-8 text")
                }
                return json("{\(AuditEntry.quoted(name)):\(AuditEntry.quoted(text))}")
            } catch {
                return failure(.internalServerError, "ERR_SECRET_GET", "\(error)")
            }
        }
        StatusServer.serve(router, on: api.daprHTTP, name: "Dapr API", logger: logger)
        logger.info("Dapr secrets API", metadata: ["listen": "\(api.daprHTTP)"])
    }

    static func json(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// Dapr's error shape; messages name stores and keys, never a value.
    static func failure(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: "{\"errorCode\":\"\(code)\",\"message\":\(AuditEntry.quoted(message))}")))
    }
}
