import Deadline
import CCurl
import Foundation
import SecretsCore
import Locking

/// A response: status and body. The body may hold secrets: it is never logged.
struct HTTPResponse: Sendable {
    var status: Int
    var body: [UInt8]
    /// Where a redirect points (a standby's `307` to the active node), else nil.
    var location: String? = nil
}

/// HTTP over libcurl, the only place C meets the Vault store. Handles are reused (keep-alive) from a small pool, so
/// parallel readers do not queue behind one connection.
///
/// A cluster's nodes: requests go to the node that answered last. A transport failure, a timeout, a 5xx (a sealed
/// node answers 503) moves on to the next address; a redirect (a standby's `307` with `Location`) is followed. The
/// whole request, every node tried included, is bounded by the store's `timeout`: each try gets the time left shared
/// among the nodes not yet tried, so one hung node cannot take all of it.
final class HTTPClient: Sendable {
    struct Settings: Sendable {
        var timeout: Double
        var caFile: String?
        var skipVerify: Bool
        /// Base URLs (`https://v1:8200`), in the order they are tried.
        var addresses: [String]
    }

    let settings: Settings
    /// The base URL that answered last.
    private let current: Locked<String>
    /// When the active node was last looked for (nil: due; reset by every switch). Looked for again every 10 s, so
    /// readers left on a standby after an election find the new active node.
    private let leaderCheckedAt = Locked<Double?>(nil)
    /// When each node last failed a request: a node that failed in the last 10 s is not moved to as "active" (a
    /// standby keeps naming a dead leader until the election ends).
    private let failedAt = Locked<[String: Double]>([:])
    /// Called when requests move to another node: (from, to, why). Addresses and reasons only.
    private let onSwitch: @Sendable (String, String, String) -> Void
    private let idle: Locked<[Handle]>
    /// Multi handles keep their own connection cache: they live as long as the client so that connections are
    /// reused between lookups. Each is used by one thread at a time.
    private let multis: Locked<[Multi]>

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

    init(settings: Settings, onSwitch: @escaping @Sendable (String, String, String) -> Void = { _, _, _ in }) {
        _ = Self.globalInit
        self.settings = settings
        self.current = Locked(settings.addresses.first ?? "")
        self.onSwitch = onSwitch
        self.idle = Locked([])
        self.multis = Locked([])
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
        _ method: String, _ url: String, headers: [String: String], body: [UInt8]?, timeout: Double
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
        let milliseconds = max(1, Int(timeout * 1000))
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_CONNECTTIMEOUT_MS, milliseconds)
        _ = secretsfs_curl_setopt_long(raw, CURLOPT_TIMEOUT_MS, milliseconds)
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
        var location: String?
        if (300..<400).contains(status), let url = secretsfs_curl_redirect_url(prepared.handle.raw) {
            location = String(cString: url)
        }
        idle.withLock { if $0.count < 16 { $0.append(prepared.handle) } }
        return .success(HTTPResponse(status: status, body: prepared.sink.bytes, location: location))
    }

    /// What a response says about the node that sent it.
    enum Verdict {
        case answered(HTTPResponse)
        case redirect(to: String)
        case nodeFailed(SecretsError)
    }

    static func verdict(_ result: Result<HTTPResponse, SecretsError>, url: String) -> Verdict {
        switch result {
        case .failure(let error):
            return .nodeFailed(error)
        case .success(let response):
            if (300..<400).contains(response.status), let location = response.location, let base = baseURL(location) {
                return .redirect(to: base)
            }
            if response.status >= 500 {
                let why = response.status == 503 ? "HTTP 503 (sealed or unavailable)" : "HTTP \(response.status)"
                return .nodeFailed(SecretsError(.storeUnavailable, "\(redacted(url)): \(why)"))
            }
            return .answered(response)
        }
    }

    /// `scheme://host:port` of a URL.
    static func baseURL(_ url: String) -> String? {
        guard let scheme = url.range(of: "://") else { return nil }
        let rest = url[scheme.upperBound...]
        let end = rest.firstIndex(of: "/") ?? rest.endIndex
        guard end > rest.startIndex else { return nil }
        return String(url[..<end])
    }

    /// The order to try nodes in: the one that answered last, then the others as configured.
    func candidates() -> [String] {
        let last = current.withLock { $0 }
        return [last] + settings.addresses.filter { $0 != last }
    }

    private func answered(by base: String, reason: String) {
        let previous = current.withLock { current -> String? in
            guard current != base else { return nil }
            defer { current = base }
            return current
        }
        if let previous {
            leaderCheckedAt.withLock { $0 = nil }
            onSwitch(previous, base, reason)
        }
    }

    /// With several addresses, at the start, after each switch and every 10 s: asks the node that answered which
    /// node is active (`GET /v1/sys/leader`, no token) and moves there when it is one of the configured addresses and
    /// has not failed in the last 10 s. Standbys of recent OpenBao versions answer reads themselves from their
    /// replica, which may trail the active node by a moment; the active node gives readers what was last written.
    private func preferLeader(asking base: String, skipping: Bool) {
        guard settings.addresses.count > 1, !skipping else { return }
        let now = CoreClock.monotonic()
        let due = leaderCheckedAt.withLock { checked -> Bool in
            if let checked, now - checked < 10 { return false }
            checked = now
            return true
        }
        guard due else { return }
        let result: Result<HTTPResponse, SecretsError>
        do {
            let prepared = try prepare("GET", base + "/v1/sys/leader", headers: [:], body: nil, timeout: min(1, OperationDeadline.remaining(settings.timeout)))
            result = finish(prepared, code: curl_easy_perform(prepared.handle.raw))
        } catch {
            result = .failure(error)
        }
        guard case .success(let response) = result, response.status == 200,
            case .table(let fields)? = SecretValue.parseJSON(response.body),
            case .bool(true)? = fields["ha_enabled"], case .bool(false)? = fields["is_self"],
            case .string(let address)? = fields["leader_address"], let leader = Self.baseURL(address),
            leader != base, settings.addresses.contains(leader),
            failedAt.withLock({ $0[leader] }).map({ now - $0 >= 10 }) ?? true
        else { return }
        let moved = current.withLock { current -> Bool in
            guard current == base else { return false }
            current = leader
            return true
        }
        if moved { onSwitch(base, leader, "\(base) is a standby; \(leader) is active") }
    }

    /// Sends one request to the cluster (`path` from `/v1/...`), moving between nodes as the type says. Transport
    /// failures (connect, timeout, TLS) are `storeUnavailable`/`timeout` errors naming the URL, never the body or the
    /// headers' values.
    func request(
        _ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8]? = nil
    ) throws(SecretsError) -> HTTPResponse {
        let deadline = OperationDeadline.limit(settings.timeout)
        var queue = candidates()
        var tried = 0
        var reasons: [String] = []
        var lastError: SecretsError?
        var redirects = 0
        while !queue.isEmpty {
            let base = queue.removeFirst()
            let remaining = deadline - CoreClock.monotonic()
            guard remaining > 0.001 else { break }
            let budget = max(remaining / Double(max(1, queue.count + 1)), min(remaining, 0.25))
            let url = base + path
            let result: Result<HTTPResponse, SecretsError>
            do {
                let prepared = try prepare(method, url, headers: headers, body: body, timeout: budget)
                result = finish(prepared, code: curl_easy_perform(prepared.handle.raw))
            } catch {
                result = .failure(error)
            }
            tried += 1
            switch Self.verdict(result, url: url) {
            case .answered(let response):
                answered(by: base, reason: reasons.last ?? "redirected")
                preferLeader(asking: base, skipping: path == "/v1/sys/leader")
                return response
            case .redirect(let target):
                redirects += 1
                guard redirects <= 3, target != base else {
                    reasons.append("\(base): redirect loop")
                    continue
                }
                reasons.append("\(base) redirected to \(target)")
                queue.removeAll { $0 == target }
                queue.insert(target, at: 0)
            case .nodeFailed(let error):
                reasons.append(error.message)
                lastError = error
                if settings.addresses.count > 1 {
                    let now = CoreClock.monotonic()
                    failedAt.withLock { $0[base] = now }
                }
            }
        }
        let detail = reasons.isEmpty ? "no time left" : reasons.joined(separator: "; ")
        let kind: SecretsError.Code = reasons.isEmpty ? .timeout : .storeUnavailable
        if settings.addresses.count == 1, tried <= 1, let lastError { throw lastError }
        throw SecretsError(kind, "\(method) \(Self.redacted(path)): no node answered within \(settings.timeout)s (\(detail))")
    }

    /// Sends several GETs at once on one thread with libcurl's multi interface: the wait is about one round trip,
    /// whatever the number of cores. Results come back in the order of `paths`. When the node that answered last
    /// fails any of them, each is sent again through `request`, which moves on to the other nodes.
    func getAll(_ paths: [String], headers: [String: String]) -> [Result<HTTPResponse, SecretsError>] {
        let base = current.withLock { $0 }
        let results = getAllOnce(paths.map { base + $0 }, headers: headers)
        let nodeFailed = zip(results, paths).contains { result, path in
            if case .answered = Self.verdict(result, url: base + path) { return false }
            return true
        }
        guard nodeFailed else { return results }
        return paths.map { path in
            do throws(SecretsError) {
                return .success(try request("GET", path, headers: headers))
            } catch {
                return .failure(error)
            }
        }
    }

    private func getAllOnce(_ urls: [String], headers: [String: String]) -> [Result<HTTPResponse, SecretsError>] {
        var prepared: [Prepared] = []
        for url in urls {
            do {
                prepared.append(
                    try prepare("GET", url, headers: headers, body: nil, timeout: OperationDeadline.remaining(settings.timeout)))
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
        // The handles time out by themselves; this bound only guards the loop.
        let deadline = OperationDeadline.limit(settings.timeout) + 0.5
        while running > 0 && CoreClock.monotonic() < deadline {
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
