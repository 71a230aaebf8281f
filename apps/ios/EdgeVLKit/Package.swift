// swift-tools-version: 5.9
// EdgeVLKit: what an app needs around an edgevl export's Core ML towers: the export's manifest and
// preprocess.json, Pillow-exact preprocessing, the export's tokenizer (Hugging Face
// swift-transformers), and the zero-shot ranking. `swift test` checks it against
// apps/testvectors/default.json (macOS).
import PackageDescription

let package = Package(
    name: "EdgeVLKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "EdgeVLKit", targets: ["EdgeVLKit"])],
    dependencies: [
        // AutoTokenizer.from(tokenizerConfig:tokenizerData:), Config(_: [NSString: Any]) and
        // encode(text:addSpecialTokens:) as read in this tag's sources.
        .package(url: "https://github.com/huggingface/swift-transformers", exact: "1.3.3"),
    ],
    targets: [
        .target(
            name: "EdgeVLKit",
            dependencies: [
                .product(name: "Tokenizers", package: "swift-transformers"),
                .product(name: "Hub", package: "swift-transformers"),
            ]
        ),
        .testTarget(name: "EdgeVLKitTests", dependencies: ["EdgeVLKit"]),
    ]
)
