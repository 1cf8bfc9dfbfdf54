import Hummingbird
import Logging
import SecretsCore

/// Dapr's secrets API over HTTP, on the same resolver and cache as the mount: `GET /v1.0/secrets/<store>/<name>`,
/// `GET /v1.0/secrets/<store>/bulk`, `GET /v1.0/healthz` and `/v1.0/healthz/outbound` (what the SDKs wait on).
/// Status codes as Dapr documents them: 204 not found, 400 no such store, 401 bad token, 403 denied by policy, 500
/// failure. The health endpoints need no token, as in Dapr.
public enum DaprAPI {
    public static func start(_ api: SecretsAPI, listen: MetricsListen, logger: Logger) {
        let router = Router()
        router.get("/v1.0/healthz") { _, _ -> Response in Response(status: .noContent) }
        router.get("/v1.0/healthz/outbound") { _, _ -> Response in Response(status: .noContent) }
        router.get("/v1.0/secrets/:store/bulk") { request, context -> Response in
            guard api.authorizes(token(request)) else { return unauthorized() }
            let store = context.parameters.get("store") ?? ""
            let options = metadata(request)
            switch await SecretsAPI.offload({ () throws(SecretsAPIError) in try api.bulk(store: store, metadata: options) }) {
            case .success(let entries):
                let fields = entries.map { "\(JSONText.quoted($0.name)):{\(JSONText.quoted($0.name)):\(JSONText.quoted($0.value))}" }
                return json("{" + fields.joined(separator: ",") + "}")
            case .failure(let error):
                return failure(error)
            }
        }
        router.get("/v1.0/secrets/:store/:name") { request, context -> Response in
            guard api.authorizes(token(request)) else { return unauthorized() }
            let name = context.parameters.get("name") ?? ""
            let store = context.parameters.get("store") ?? ""
            let options = metadata(request)
            switch await SecretsAPI.offload({ () throws(SecretsAPIError) in
                try api.secret(store: store, name: name, metadata: options)
            }) {
            case .success(let value): return json("{\(JSONText.quoted(name)):\(JSONText.quoted(value))}")
            case .failure(let error): return failure(error)
            }
        }
        StatusServer.serve(router, on: listen, name: "Dapr HTTP API", logger: logger)
        logger.info("Dapr secrets API (HTTP)", metadata: ["listen": "\(listen)"])
    }

    static func token(_ request: Request) -> String? {
        request.headers.first { $0.name.canonicalName == "dapr-api-token" }?.value
    }

    /// `?metadata.<k>=<v>` query parameters.
    static func metadata(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        for (name, value) in request.uri.queryParameters where name.hasPrefix("metadata.") {
            out[String(name.dropFirst("metadata.".count))] = String(value)
        }
        return out
    }

    static func json(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func unauthorized() -> Response {
        body(.unauthorized, "ERR_API_TOKEN", "invalid api token")
    }

    static func failure(_ error: SecretsAPIError) -> Response {
        switch error {
        case .notFound: Response(status: .noContent)
        case .storeNotFound: body(.badRequest, error.daprCode, error.description)
        case .forbidden: body(.forbidden, error.daprCode, error.description)
        case .notText, .failed: body(.internalServerError, error.daprCode, error.description)
        }
    }

    /// Dapr's error shape; messages name stores and keys, never a value.
    static func body(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: "{\"errorCode\":\"\(code)\",\"message\":\(JSONText.quoted(message))}")))
    }
}
