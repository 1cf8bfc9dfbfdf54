import CCurl
import Foundation
import SecretsCore
import Synchronization

/// A response: status and body. The body may hold secrets: it is never logged.
struct HTTPResponse: Sendable {
    var status: Int
    var body: [UInt8]
}

/// HTTP over libcurl, the only place C meets the Vault store. Handles are reused (keep-alive) from a small pool, so
/// parallel readers do not queue behind one connection.
final class HTTPClient: Sendable {
    struct Settings: Sendable {
        var timeout: Double
        var caFile: String?
        var skipVerify: Bool
    }

    let settings: Settings
    private let idle: Mutex<[Handle]>

    /// One curl easy handle; used by one request at a time.
    final class Handle: @unchecked Sendable {
        let raw: UnsafeMutableRawPointer

        init?() {
            guard let raw = curl_easy_init() else { return nil }
            self.raw = raw
        }

        deinit { curl_easy_cleanup(raw) }
    }

    /// The buffer the write callback appends to, reached through CURLOPT_WRITEDATA.
    final class Sink {
        var bytes: [UInt8] = []
        let limit: Int
        init(limit: Int) { self.limit = limit }
    }

    private static let globalInit: Bool = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    }()

    init(settings: Settings) {
        _ = Self.globalInit
        self.settings = settings
        self.idle = Mutex([])
    }

    func close() {
        idle.withLock { $0.removeAll() }
    }

    /// Sends one request. Transport failures (connect, timeout, TLS) are `storeUnavailable`/`timeout` errors naming
    /// the URL, never the body or the headers' values.
    func request(
        _ method: String, _ url: String, headers: [String: String] = [:], body: [UInt8]? = nil
    ) throws(SecretsError) -> HTTPResponse {
        guard let handle = idle.withLock({ $0.popLast() }) ?? Handle() else {
            throw SecretsError(.io, "cannot create a libcurl handle")
        }
        let raw = handle.raw
        curl_easy_reset(raw)
        let sink = Sink(limit: 64 << 20)
        let unmanaged = Unmanaged.passRetained(sink)
        defer { unmanaged.release() }
        _ = secretsfs_curl_setopt_string(raw, CURLOPT_URL, url)
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_NOSIGNAL, 1)
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_CONNECTTIMEOUT_MS, Int(settings.timeout * 1000))
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_TIMEOUT_MS, Int(settings.timeout * 1000))
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_TCP_KEEPALIVE, 1)
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_FOLLOWLOCATION, 0)
        if let caFile = settings.caFile { _ = secretsfs_curl_setopt_string(raw, CURLOPT_CAINFO, caFile) }
        if settings.skipVerify {
            _ = secretsfs_curl_setopt_long(raw, CURLOPT_SSL_VERIFYPEER, 0)
            _ = secretsfs_curl_setopt_long(raw, CURLOPT_SSL_VERIFYHOST, 0)
        }
        _ = secretsfs_curl_setopt_string(raw, CURLOPT_CUSTOMREQUEST, method)
        var list: UnsafeMutablePointer<curl_slist>?
        for (name, value) in headers { list = curl_slist_append(list, "\(name): \(value)") }
        if body != nil { list = curl_slist_append(list, "Content-Type: application/json") }
        defer { curl_slist_free_all(list) }
        _ = secretsfs_curl_setopt_slist(raw, CURLOPT_HTTPHEADER, list)
        _ = secretsfs_curl_setopt_write(raw, { data, size, count, userdata in
            guard let data, let userdata else { return 0 }
            let sink = Unmanaged<Sink>.fromOpaque(userdata).takeUnretainedValue()
            let length = size * count
            guard sink.bytes.count + length <= sink.limit else { return 0 }
            sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            return length
        }, unmanaged.toOpaque())
        var payload = body ?? []
        defer { wipe(&payload) }
        let code: CURLcode = payload.withUnsafeMutableBytes { buffer in
            if body != nil {
                _ = secretsfs_curl_setopt_long(raw, CURLOPT_POSTFIELDSIZE, buffer.count)
                _ = secretsfs_curl_setopt_pointer(raw, CURLOPT_POSTFIELDS, buffer.baseAddress)
            }
            return curl_easy_perform(raw)
        }
        guard code == CURLE_OK else {
            let reason = String(cString: curl_easy_strerror(code))
            let kind: SecretsError.Code = code == CURLE_OPERATION_TIMEDOUT ? .timeout : .storeUnavailable
            throw SecretsError(kind, "\(method) \(Self.redacted(url)): \(reason)")
        }
        var status = 0
        _ = secretsfs_curl_response_code(raw, &status)
        idle.withLock { if $0.count < 8 { $0.append(handle) } }
        return HTTPResponse(status: status, body: sink.bytes)
    }

    /// A URL without its query string.
    static func redacted(_ url: String) -> String {
        url.split(separator: "?", maxSplits: 1).first.map(String.init) ?? url
    }
}
