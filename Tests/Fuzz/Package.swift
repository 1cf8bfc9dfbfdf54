// swift-tools-version:6.1
// libFuzzer targets for the parsers of untrusted bytes. Its own package so that the main build never needs
// libFuzzer's `main`: `make fuzz` builds it with --sanitize=fuzzer --sanitize=address and runs every target.
import PackageDescription

let package = Package(
    name: "secretsfs-fuzz",
    dependencies: [.package(name: "secretsfs", path: "../..")],
    targets: [
        .executableTarget(
            name: "secretsfs-fuzz",
            dependencies: [.product(name: "FuzzTargets", package: "secretsfs")],
            path: "Sources",
            // libFuzzer provides main; the target is only the LLVMFuzzerTestOneInput entry point.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    ],
    swiftLanguageModes: [.v6]
)
