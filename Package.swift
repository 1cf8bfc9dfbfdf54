// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "secretsfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "secretsfs", targets: ["secretsfs"]),
        // The parsers of untrusted bytes as fuzz targets, for the fuzzing package in Tests/Fuzz (`make fuzz`).
        .library(name: "FuzzTargets", targets: ["FuzzTargets"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C edge: only FuseBridge imports this module.
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // C edge for HTTP: only VaultStore imports this module.
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // C edge for TLS: only RedisClient imports this module.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // C edge for ThreadSanitizer's annotations (weak: absent outside a TSan build). Only Locking imports it.
        .systemLibrary(name: "CSanitizer"),
        // The project's lock: Synchronization.Mutex, with its ordering made visible to ThreadSanitizer.
        .target(name: "Locking", dependencies: ["CSanitizer"], swiftSettings: strict),
        // One deadline per operation, shared by every backend wait inside it.
        .target(name: "Deadline", swiftSettings: strict),
        // C edge for the supervisor's Linux calls (signalfd, memfd) that Glibc's module lacks.
        .systemLibrary(name: "CLinux"),
        // Pure Swift core: values, errors, config, resolver, cache, inode table, store protocol.
        .target(
            name: "SecretsCore",
            dependencies: [
                "CLinux", "Locking", "Deadline",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: strict
        ),
        // The supervisor/worker protocol: messages, node table, re-exec state, transport, versions.
        .target(name: "Handover", dependencies: ["SecretsCore", "CLinux"], swiftSettings: strict),
        // The supervisor: event loop, worker processes, restart policy. Never links a store or the FUSE operations.
        .target(
            name: "Supervision",
            dependencies: ["Handover", "SecretsCore", "CLinux", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // The age file format (age-encryption.org/v1) on swift-crypto.
        .target(
            name: "Age",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // Backend: local age-encrypted files.
        .target(
            name: "FileStore",
            dependencies: [
                "SecretsCore", "Age", "Locking",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // A small RESP2 client: TCP, unix sockets, TLS, AUTH/ACL, SELECT, timeouts, pool.
        .target(
            name: "RedisClient",
            dependencies: ["COpenSSL", "Locking", "Deadline"],
            swiftSettings: strict
        ),
        // Backend: the daemon's environment (Prefect-style secrets).
        .target(name: "EnvStore", dependencies: ["SecretsCore"], swiftSettings: strict),
        // Backend: Redis hashes in Dynaconf's layout.
        .target(
            name: "RedisStore",
            dependencies: ["SecretsCore", "RedisClient", "Locking", "Deadline", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // Backend: HashiCorp Vault / OpenBao KV v1 and v2 in Dynaconf's layout, over libcurl.
        .target(
            name: "VaultStore",
            dependencies: [
                "SecretsCore", "CCurl", "Locking", "Deadline", .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // [metrics]: /metrics (Prometheus text), /healthz and /status over Hummingbird, for the worker.
        .target(
            name: "StatusServer",
            dependencies: [
                "SecretsCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // [api] dapr_grpc: Dapr's GetSecret / GetBulkSecret over gRPC. Generated/ is generated from
        // dapr_secrets.proto by `make proto` and committed.
        .target(
            name: "DaprGRPC",
            dependencies: [
                "SecretsCore",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["dapr_secrets.proto"],
            swiftSettings: strict
        ),
        // [csi]: the Kubernetes CSI node plugin (Identity, Node) over gRPC on a unix socket. Generated/ is generated
        // from csi.proto by `make proto` and committed.
        .target(
            name: "CSIPlugin",
            dependencies: [
                "SecretsCore", "CLinux",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["csi.proto"],
            swiftSettings: strict
        ),
        // Translates FUSE low-level requests to the core.
        .target(
            name: "FuseBridge",
            dependencies: ["CFuse3", "SecretsCore", "Handover", "Locking", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "secretsfs",
            dependencies: [
                "SecretsCore", "Age", "FileStore", "RedisStore", "VaultStore", "EnvStore", "FuseBridge",
                "StatusServer", "DaprGRPC", "CSIPlugin", "Handover", "Supervision", "CLinux", "Locking",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "secretsfs-bench", dependencies: ["RedisClient", "VaultStore", "TestSupport"], swiftSettings: strict),
        // Helpers shared by the test targets: subprocesses with timeouts, temporary folders, the built binary.
        .target(name: "TestSupport", dependencies: ["Locking"], path: "Tests/TestSupport", swiftSettings: strict),
        // What every store must do (reads, layers, changes, watch, close), run by each store's tests and the fake's.
        .target(name: "StoreConformance", dependencies: ["SecretsCore", "Locking"], path: "Tests/StoreConformance", swiftSettings: strict),
        .target(
            name: "FuzzTargets", dependencies: ["SecretsCore", "Age", "RedisClient", "RedisStore", "VaultStore"],
            path: "Tests/Fuzz/Targets", swiftSettings: strict),
        .testTarget(
            name: "CoreTests", dependencies: ["SecretsCore", "Handover", "Supervision", "TestSupport", "FuzzTargets", "Age", "StoreConformance", "Locking"],
            swiftSettings: strict),
        .testTarget(name: "AgeTests", dependencies: ["Age", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "StoreTests",
            dependencies: [
                "SecretsCore", "FileStore", "Age", "RedisClient", "RedisStore", "VaultStore", "EnvStore", "TestSupport",
                "StoreConformance", "Locking", .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict),
        .testTarget(name: "MountTests", dependencies: ["Age", "TestSupport", "RedisClient", "CLinux", "Locking"], swiftSettings: strict),
        .testTarget(
            name: "DeployTests", dependencies: ["TestSupport", .product(name: "Yams", package: "Yams")],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
