// swift-tools-version:5.7
// libqwen for Swift: a module map over include/qwen.h (CQwen) and a thin wrapper (Qwen) with
// AsyncThrowingStream streaming. Link against libqwen built by cargo, e.g.
//   swift build -Xlinker -L../../target/release
// See README.md for what was and was not compiled.
import PackageDescription

let package = Package(
    name: "Qwen",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Qwen", targets: ["Qwen"]),
    ],
    targets: [
        .systemLibrary(name: "CQwen", path: "Sources/CQwen"),
        .target(name: "Qwen", dependencies: ["CQwen"], path: "Sources/Qwen"),
        .testTarget(name: "QwenTests", dependencies: ["Qwen"], path: "Tests/QwenTests"),
    ]
)
