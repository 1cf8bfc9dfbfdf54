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
    /// Multi handles keep their own connection cache: they live as long as the client so that connections are
    /// reused between lookups. Each is used by one thread at a time.
    private let multis: Mutex<[Multi]>

    final class Multi: @unchecked Sendable {
        let raw: UnsafeMutableRawPointer

        init?() {
            guard let raw = curl_multi_init() else { return nil }
            self.raw = raw
        }

        deinit { curl_multi_cleanup(raw) }
    }

    /// One curl easy handle; used by one request at a time. A handle keeps the options of its last body-less request,
    /// so repeating the same GET (a fresh key read in a loop) sets nothing up again.
    final class Handle: @unchecked Sendable {
        let raw: UnsafeMutableRawPointer
        /// Method, URL and header lines the options are set for; nil when they must be set again.
        var configuredFor: String?
        var headerList: UnsafeMutablePointer<curl_slist>?

        init?() {
            guard let raw = curl_easy_init() else { return nil }
            self.raw = raw
        }

        deinit {
            curl_easy_cleanup(raw)
            curl_slist_free_all(headerList)
        }
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
        self.multis = Mutex([])
    }

    func close() {
        idle.withLock { $0.removeAll() }
        multis.withLock { $0.removeAll() }
    }

    /// What one transfer needs until it finishes: its handle, body buffer and payload.
    final class Prepared {
        let handle: Handle
        let sink = Sink(limit: 64 << 20)
        var payload: [UInt8]
        let method: String
        let url: String

        init(handle: Handle, method: String, url: String, payload: [UInt8]) {
            self.handle = handle
            self.method = method
            self.url = url
            self.payload = payload
        }

        deinit { wipe(&payload) }
    }

    private func prepare(
        _ method: String, _ url: String, headers: [String: String], body: [UInt8]?
    ) throws(SecretsError) -> Prepared {
        let lines = headers.keys.sorted().map { "\($0): \(headers[$0] ?? "")" }
        // Only body-less requests are reused as they are: a body's options point into this request's payload.
        let key = body == nil ? ([method, url] + lines).joined(separator: "\n") : nil
        let pooled = idle.withLock { pool -> Handle? in
            if let key, let index = pool.lastIndex(where: { $0.configuredFor == key }) { return pool.remove(at: index) }
            return pool.popLast()
        }
        guard let handle = pooled ?? Handle() else {
            throw SecretsError(.io, "cannot create a libcurl handle")
        }
        let prepared = Prepared(handle: handle, method: method, url: url, payload: body ?? [])
        let raw = handle.raw
        if key == nil || handle.configuredFor != key {
            configure(handle, method: method, url: url, lines: lines, hasBody: body != nil)
            handle.configuredFor = key
        }
        _ = secretsfs_curl_setopt_pointer(raw, CURLOPT_WRITEDATA, Unmanaged.passUnretained(prepared.sink).toOpaque())
        if body != nil {
            _ = secretsfs_curl_setopt_long(raw, CURLOPT_POSTFIELDSIZE, prepared.payload.count)
            prepared.payload.withUnsafeMutableBytes { buffer in
                _ = secretsfs_curl_setopt_pointer(raw, CURLOPT_POSTFIELDS, buffer.baseAddress)
            }
        }
        return prepared
    }

    /// Sets every option of a request but its body and its sink, from a clean handle (connections are kept).
    private func configure(_ handle: Handle, method: String, url: String, lines: [String], hasBody: Bool) {
        let raw = handle.raw
        curl_easy_reset(raw)
        curl_slist_free_all(handle.headerList)
        handle.headerList = nil
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
        for line in lines { handle.headerList = curl_slist_append(handle.headerList, line) }
        if hasBody { handle.headerList = curl_slist_append(handle.headerList, "Content-Type: application/json") }
        _ = secretsfs_curl_setopt_slist(raw, CURLOPT_HTTPHEADER, handle.headerList)
        _ = secretsfs_curl_setopt_write(raw, { data, size, count, userdata in
            guard let data, let userdata else { return 0 }
            let sink = Unmanaged<Sink>.fromOpaque(userdata).takeUnretainedValue()
            let length = size * count
            guard sink.bytes.count + length <= sink.limit else { return 0 }
            sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            return length
        }, nil)
    }

    private func finish(_ prepared: Prepared, code: CURLcode) -> Result<HTTPResponse, SecretsError> {
        guard code == CURLE_OK else {
            let reason = String(cString: curl_easy_strerror(code))
            let kind: SecretsError.Code = code == CURLE_OPERATION_TIMEDOUT ? .timeout : .storeUnavailable
            return .failure(SecretsError(kind, "\(prepared.method) \(Self.redacted(prepared.url)): \(reason)"))
        }
        var status = 0
        _ = secretsfs_curl_response_code(prepared.handle.raw, &status)
        idle.withLock { if $0.count < 16 { $0.append(prepared.handle) } }
        return .success(HTTPResponse(status: status, body: prepared.sink.bytes))
    }

    /// Sends one request. Transport failures (connect, timeout, TLS) are `storeUnavailable`/`timeout` errors naming
    /// the URL, never the body or the headers' values.
    func request(
        _ method: String, _ url: String, headers: [String: String] = [:], body: [UInt8]? = nil
    ) throws(SecretsError) -> HTTPResponse {
        let prepared = try prepare(method, url, headers: headers, body: body)
        let code = curl_easy_perform(prepared.handle.raw)
        return try finish(prepared, code: code).get()
    }

    /// Sends several GETs at once on one thread with libcurl's multi interface: the wait is about one round trip,
    /// whatever the number of cores. Results come back in the order of `urls`.
    func getAll(_ urls: [String], headers: [String: String]) -> [Result<HTTPResponse, SecretsError>] {
        var prepared: [Prepared] = []
        for url in urls {
            do {
                prepared.append(try prepare("GET", url, headers: headers, body: nil))
            } catch {
                return urls.map { _ in .failure(error) }
            }
        }
        guard prepared.count > 1, let lane = multis.withLock({ $0.popLast() }) ?? Multi() else {
            return prepared.map { finish($0, code: curl_easy_perform($0.handle.raw)) }
        }
        defer { multis.withLock { if $0.count < 8 { $0.append(lane) } } }
        let multi = lane.raw
        for item in prepared { curl_multi_add_handle(multi, item.handle.raw) }
        var codes: [UnsafeMutableRawPointer: CURLcode] = [:]
        var running: Int32 = 1
        let deadline = FileSystemCore.monotonicSeconds() + settings.timeout + 1
        while running > 0 && FileSystemCore.monotonicSeconds() < deadline {
            curl_multi_perform(multi, &running)
            var easy: UnsafeMutableRawPointer?
            var result = CURLE_OK
            while secretsfs_curl_multi_next_done(multi, &easy, &result) == 1 {
                if let easy { codes[easy] = result }
            }
            if running > 0 { curl_multi_poll(multi, nil, 0, 100, nil) }
        }
        var easy: UnsafeMutableRawPointer?
        var result = CURLE_OK
        while secretsfs_curl_multi_next_done(multi, &easy, &result) == 1 {
            if let easy { codes[easy] = result }
        }
        for item in prepared { curl_multi_remove_handle(multi, item.handle.raw) }
        return prepared.map { finish($0, code: codes[$0.handle.raw] ?? CURLE_OPERATION_TIMEDOUT) }
    }

    /// A URL without its query string.
    static func redacted(_ url: String) -> String {
        url.split(separator: "?", maxSplits: 1).first.map(String.init) ?? url
    }
}
