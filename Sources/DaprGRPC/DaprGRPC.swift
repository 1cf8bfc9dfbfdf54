import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import SecretsCore

#if canImport(Glibc)
import Glibc
#endif

/// Dapr's secrets API over gRPC: `dapr.proto.runtime.v1.Dapr/GetSecret` and `GetBulkSecret` on the same
/// `SecretsAPI` as the HTTP side, `dapr-api-token` from the call's metadata. Any other method of Dapr's service is
/// unknown here, so gRPC answers UNIMPLEMENTED. Status codes: INVALID_ARGUMENT for an unknown store (as Dapr),
/// UNAUTHENTICATED for a missing or wrong token, PERMISSION_DENIED by policy, NOT_FOUND for a missing secret,
/// INTERNAL for a failing store or a value that is not text.
public enum DaprGRPC {
    public static func start(_ api: SecretsAPI, listen: MetricsListen, logger: Logger) {
        let address: GRPCNIOTransportCore.SocketAddress
        switch listen {
        case .tcp(let host, let port):
            address = host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port)
        case .unix(let path):
            unlink(path)
            address = .unixDomainSocket(path: path)
        }
        let service = Service(api: api)
        Listener.start("Dapr gRPC API", logger: logger) {
            try await GRPCServer(transport: .http2NIOPosix(address: address, transportSecurity: .plaintext), services: [service]).serve()
        }
        logger.info("Dapr secrets API (gRPC)", metadata: ["listen": "\(listen)"])
    }

    struct Service: Dapr_Proto_Runtime_V1_Dapr.ServiceProtocol {
        let api: SecretsAPI

        func getSecret(
            request: ServerRequest<Dapr_Proto_Runtime_V1_GetSecretRequest>, context: ServerContext
        ) async throws -> ServerResponse<Dapr_Proto_Runtime_V1_GetSecretResponse> {
            try authorize(request.metadata)
            let message = request.message
            let value = try await offload { () throws(SecretsAPIError) in
                try api.secret(store: message.storeName, name: message.key, metadata: message.metadata)
            }
            var response = Dapr_Proto_Runtime_V1_GetSecretResponse()
            response.data = [message.key: value]
            return ServerResponse(message: response)
        }

        func getBulkSecret(
            request: ServerRequest<Dapr_Proto_Runtime_V1_GetBulkSecretRequest>, context: ServerContext
        ) async throws -> ServerResponse<Dapr_Proto_Runtime_V1_GetBulkSecretResponse> {
            try authorize(request.metadata)
            let message = request.message
            let entries = try await offload { () throws(SecretsAPIError) in
                try api.bulk(store: message.storeName, metadata: message.metadata)
            }
            var response = Dapr_Proto_Runtime_V1_GetBulkSecretResponse()
            for entry in entries {
                var secret = Dapr_Proto_Runtime_V1_SecretResponse()
                secret.secrets = [entry.name: entry.value]
                response.data[entry.name] = secret
            }
            return ServerResponse(message: response)
        }

        func authorize(_ metadata: Metadata) throws(RPCError) {
            let given = metadata[stringValues: "dapr-api-token"].first { _ in true }
            guard api.authorizes(given) else { throw RPCError(code: .unauthenticated, message: "invalid api token") }
        }
    }

    /// The read off the cooperative pool; a failure as a gRPC status.
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws(SecretsAPIError) -> T) async throws(RPCError) -> T {
        switch await SecretsAPI.offload(body) {
        case .success(let value): return value
        case .failure(let error): throw RPCError(code: code(error), message: "\(error.daprCode): \(error)")
        }
    }

    static func code(_ error: SecretsAPIError) -> RPCError.Code {
        switch error {
        case .storeNotFound: .invalidArgument
        case .forbidden: .permissionDenied
        case .notFound: .notFound
        case .notText, .failed: .internalError
        }
    }
}
