import FuzzTargets
import Glibc

let selected: (@Sendable ([UInt8]) -> Void)? = {
    guard let name = getenv("FUZZ_TARGET").map({ String(cString: $0) }) else { return nil }
    return FuzzTargets.all[name]
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let target = selected else {
        let message = Array("set FUZZ_TARGET to one of: \(FuzzTargets.all.keys.sorted().joined(separator: " "))\n".utf8)
        _ = message.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        exit(2)
    }
    target(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}
