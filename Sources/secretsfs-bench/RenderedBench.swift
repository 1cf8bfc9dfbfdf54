import Foundation
import RedisClient

/// Rendered files (`[[files]]`) against a single key, through one mount over a real redis-server: a cached rendered
/// file of 20 keys against a cached key (both served by the page cache: the target is >= 0.9x), and a fresh
/// rendered file of 20 keys against a fresh key in Redis commands per open (one view fetch per store, not one
/// command per key).
enum RenderedBench {
    static func run(binary: String, root: String, seconds: Double) {
        guard let (server, port, connection) = RedisBench.startServer(root: root) else {
            print("rendered files: redis-server is not installed (make deps) or did not start; skipped")
            return
        }
        defer {
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        var fields: [String] = []
        for index in 0..<20 { fields += ["KEY_\(index)", "not-a-real-value-\(index)"] }
        _ = try? connection.command((["HSET", "DYNACONF_PRODUCTION"] + fields).map { Array($0.utf8) })
        func commands() -> Int {
            guard case .bulk(let raw?)? = try? connection.command("INFO", "stats") else { return 0 }
            let line = String(decoding: raw, as: UTF8.self).split(whereSeparator: \.isNewline)
                .first { $0.hasPrefix("total_commands_processed:") } ?? ""
            return Int(line.split(separator: ":").last ?? "") ?? 0
        }
        let mountpoint = root + "/mnt-rendered"
        let config = root + "/rendered.toml"
        let url = "redis://127.0.0.1:\(port)/0"
        // The same 20 keys as a template; a second one reads 10 of them from another store.
        let template = (0..<20).map { "KEY_\($0)={{KEY_\($0)}}" }.joined(separator: "\\n")
        let twoStores = (0..<20).map { "KEY_\($0)={{\($0 < 10 ? "" : "other/production/")KEY_\($0)}}" }.joined(separator: "\\n")
        let text = """
            [mount]
            path = "\(mountpoint)"
            [cache]
            ttl = "10m"
            [stores.cached]
            type = "redis"
            url = "\(url)"
            [stores.fresh]
            type = "redis"
            url = "\(url)"
            fresh = ["KEY_*"]
            [stores.other]
            type = "redis"
            url = "\(url)"
            fresh = ["KEY_*"]
            [[files]]
            path = "cached/production/app.env"
            format = "dotenv"
            [[files]]
            path = "fresh/production/app.env"
            format = "dotenv"
            [[files]]
            path = "cached/production/app.tmpl"
            template = "\(template)"
            [[files]]
            path = "fresh/production/app.tmpl"
            template = "\(template)"
            [[files]]
            path = "fresh/production/two.tmpl"
            template = "\(twoStores)"
            """
        try? text.write(toFile: config, atomically: true, encoding: .utf8)
        print("rendered files (a dotenv file of 20 keys from Redis, 1 thread):")
        BenchMount.run(binary: binary, config: config, mountpoint: mountpoint, probe: mountpoint + "/cached/production/app.env") { _ in
            let key = mountpoint + "/cached/production/KEY_0"
            let file = mountpoint + "/cached/production/app.env"
            _ = measure("warm", path: key, threads: 1, duration: 0.2)
            _ = measure("warm", path: file, threads: 1, duration: 0.2)
            let single = measure("cached key", path: key, threads: 1, duration: seconds)
            let rendered = measure("cached rendered file (20 keys)", path: file, threads: 1, duration: seconds)
            _ = measure("warm", path: mountpoint + "/cached/production/app.tmpl", threads: 1, duration: 0.2)
            let templated = measure("cached template (20 keys)", path: mountpoint + "/cached/production/app.tmpl", threads: 1, duration: seconds)
            let ratio = rendered.opsPerSecond / single.opsPerSecond
            let templateRatio = templated.opsPerSecond / single.opsPerSecond
            print("  cached key                           \(fmt(single.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(single.p50).leftPad(7)) us")
            print("  cached rendered file (20 keys)       \(fmt(rendered.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(rendered.p50).leftPad(7)) us  \(fmt(ratio, 2))x the key")
            print("  cached template (20 keys)            \(fmt(templated.opsPerSecond, 0).leftPad(9)) ops/s  p50 \(fmt(templated.p50).leftPad(7)) us  \(fmt(templateRatio, 2))x the key")
            print("  target: cached rendered file and template >= 0.9x a cached key: \(min(ratio, templateRatio) >= 0.9 ? "met" : "NOT met")")
            let opens = 2_000
            func perOpen(_ path: String) -> Double {
                let before = commands()
                for _ in 0..<opens { _ = FailoverBench.readOnce(path) }
                // Less the INFO of this count itself.
                return Double(commands() - before - 1) / Double(opens)
            }
            let freshKey = perOpen(mountpoint + "/fresh/production/KEY_0")
            let freshFile = perOpen(mountpoint + "/fresh/production/app.env")
            let freshTemplate = perOpen(mountpoint + "/fresh/production/app.tmpl")
            let freshTwo = perOpen(mountpoint + "/fresh/production/two.tmpl")
            print("  Redis commands per open: fresh key \(fmt(freshKey, 2)), fresh rendered file of 20 keys \(fmt(freshFile, 2)) (one view fetch: an HGETALL per layer, whatever the number of keys)")
            print("  Redis commands per open: fresh template of 20 keys \(fmt(freshTemplate, 2)), of 10 + 10 keys from two stores \(fmt(freshTwo, 2)) (one view fetch per store)")
        }
    }
}
