import Foundation
import Testing
import TestSupport

/// A store's `timeout` is the bound of a whole read, whatever the requests behind it (a token lookup, an env
/// listing, the KV version, GETs; connect, AUTH, pipelined HGETs): with the backend frozen, a read answers EIO
/// within the timeout and a little, never once per request.
@Suite("one read, one bound", .serialized)
struct BoundTests {
    @Test("frozen Vault and Redis: a fresh key read before, and the first read of an env, fresh key or cached, answer EIO within timeout + 100 ms")
    func frozenBackends() throws {
        let bao = try BaoServer()
        defer { bao.remove() }
        let redis = try RedisServer()
        defer { redis.remove() }
        for env in ["production", "staging"] {
            try bao.cli(["kv", "put", "secret/dynaconf/\(env)", "DB_PASS=v-\(env)", "NAME=n-\(env)"])
            try redis.hset("DYNACONF_\(env.uppercased())", [("DB_PASS", "r-\(env)"), ("NAME", "m-\(env)")])
        }
        let fixture = try Fixture()
        defer { fixture.tearDown() }
        let config = try fixture.writeTwoBackendConfig(bao: bao, redis: redis, cache: #"ttl = "5m""#)
        let fs = try fixture.mount(config: config)
        // Warm: the token is known, the connection pooled, the envs listed.
        #expect(try fs.readText("vault/production/DB_PASS") == "v-production")
        #expect(try fs.readText("redis/production/DB_PASS") == "r-production")
        let vaultEnvs = try fs.list("vault"), redisEnvs = try fs.list("redis")
        #expect(Set(vaultEnvs).isSuperset(of: ["production", "staging"]), "\(vaultEnvs)")
        #expect(Set(redisEnvs).isSuperset(of: ["production", "staging"]), "\(redisEnvs)")
        bao.pause()
        defer { bao.resume() }
        redis.pause()
        defer { redis.resume() }
        // production's fresh keys were read before: the kernel revalidates their names, then looks them up again
        // (two LOOKUPs); staging's are first reads.
        for path in ["vault/production/DB_PASS", "redis/production/DB_PASS", "vault/staging/DB_PASS", "vault/staging/NAME",
                     "redis/staging/DB_PASS", "redis/staging/NAME"] {
            let started = Date()
            do {
                let text = try fs.readText(path, timeout: 10)
                Issue.record("\(path) read \(text.count) bytes from a frozen backend")
            } catch let error as FSError {
                #expect(error.code == EIO, "\(path): \(error)")
            }
            let waited = Date().timeIntervalSince(started)
            #expect(waited < 1.1, "\(path): the read waited \(waited) s at timeout 1s")
        }
    }
}
