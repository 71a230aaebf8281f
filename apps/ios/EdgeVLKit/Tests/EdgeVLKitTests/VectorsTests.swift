import Foundation
import XCTest

@testable import EdgeVLKit

/// EdgeVLKit against apps/testvectors/default.json, the PyTorch reference's vectors that the
/// Python runtime library and the browser page are tested against too.
final class VectorsTests: XCTestCase {
    static let vectorsURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("testvectors/default.json")

    var vectors: [String: Any] = [:]

    override func setUpWithError() throws {
        let data = try Data(contentsOf: Self.vectorsURL)
        vectors = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func bytes(_ base64: Any?) throws -> [UInt8] {
        [UInt8](try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(base64 as? String))))
    }

    func testPreprocessConfigReadsTheVectors() throws {
        let config = try PreprocessConfig(json: try XCTUnwrap(vectors["preprocess"] as? [String: Any]))
        XCTAssertEqual(config.resize, 256)
        XCTAssertEqual(config.crop, 224)
        XCTAssertEqual(config.interpolation, "bilinear")
        XCTAssertEqual(config.contextLength, 32)
        var unknown = try XCTUnwrap(vectors["preprocess"] as? [String: Any])
        unknown["center_crop_ratio"] = 0.9
        XCTAssertThrowsError(try PreprocessConfig(json: unknown))
    }

    func testResampleEqualsPillow() throws {
        let checks = try XCTUnwrap(vectors["resample_checks"] as? [String: Any])
        let size = try XCTUnwrap(checks["source_size"] as? [Int])
        let source = try bytes(checks["source_rgb_base64"])
        let outputs = try XCTUnwrap(checks["outputs"] as? [[String: Any]])
        XCTAssertEqual(outputs.count, 6)
        for output in outputs {
            let target = try XCTUnwrap(output["size"] as? [Int])
            let interpolation = try XCTUnwrap(output["interpolation"] as? String)
            let got = try Resample.resize(source, width: size[0], height: size[1], newWidth: target[0],
                                          newHeight: target[1], interpolation: interpolation)
            XCTAssertEqual(got, try bytes(output["rgb_base64"]), "\(interpolation) \(target)")
        }
    }

    func testNormaliseEqualsTheReferenceTensor() throws {
        let config = try PreprocessConfig(json: try XCTUnwrap(vectors["preprocess"] as? [String: Any]))
        for image in try XCTUnwrap(vectors["images"] as? [[String: Any]]) {
            let tensor = Preprocess.normalise(try bytes(image["crop_rgb_base64"]), side: config.crop, config: config)
            let plane = config.crop * config.crop
            for sample in try XCTUnwrap(image["tensor_samples"] as? [[Double]]) {
                let (c, y, x) = (Int(sample[0]), Int(sample[1]), Int(sample[2]))
                XCTAssertEqual(Double(tensor[c * plane + y * config.crop + x]), sample[3], accuracy: 1e-6)
            }
            let sums = try XCTUnwrap(image["tensor_channel_sums"] as? [Double])
            for c in 0..<3 {
                let sum = tensor[c * plane..<(c + 1) * plane].reduce(0.0) { $0 + Double($1) }
                XCTAssertEqual(sum, sums[c], accuracy: 1e-3)
            }
        }
    }

    func testRankingEqualsTheReference() throws {
        let labels = try XCTUnwrap(vectors["labels"] as? [String])
        let template = try XCTUnwrap(vectors["template"] as? String)
        let texts = try XCTUnwrap(vectors["texts"] as? [[String: Any]])
        let byText = Dictionary(uniqueKeysWithValues: texts.map { ($0["text"] as! String, $0) })
        let prompts = try ZeroShot.prompts(labels, template: template).map { prompt in
            try XCTUnwrap(byText[prompt]?["embedding"] as? [Double]).map(Float.init)
        }
        for image in try XCTUnwrap(vectors["images"] as? [[String: Any]]) {
            let embedding = try XCTUnwrap(image["embedding"] as? [Double]).map(Float.init)
            let ranking = ZeroShot.rank(labels: labels, image: embedding, prompts: prompts)
            XCTAssertEqual(ranking.map(\.label), try XCTUnwrap(image["ranking"] as? [String]))
            let expected = try XCTUnwrap(image["scores"] as? [Double])
            for entry in ranking {
                XCTAssertEqual(entry.score, expected[labels.firstIndex(of: entry.label)!], accuracy: 1e-5)
            }
        }
    }

    /// Needs the default model's export (the vectors hold no tokenizer): EDGEVL_EXPORT=out/demo
    /// after `make demo`.
    func testTokenIdsEqualTheReference() throws {
        guard let path = ProcessInfo.processInfo.environment["EDGEVL_EXPORT"] else {
            throw XCTSkip("set EDGEVL_EXPORT to the default model's export folder (make demo writes out/demo)")
        }
        let export = try ExportFolder(url: URL(fileURLWithPath: path))
        let encoder = try TextEncoder(tokenizerFolder: export.tokenizerFolder, config: export.preprocess)
        let texts = try XCTUnwrap(vectors["texts"] as? [[String: Any]])
        let encoded = encoder.encode(texts.map { $0["text"] as! String })
        for (i, text) in texts.enumerated() {
            XCTAssertEqual(encoded.inputIds[i], try XCTUnwrap(text["input_ids"] as? [Int]), text["text"] as! String)
            XCTAssertEqual(encoded.attentionMask[i], try XCTUnwrap(text["attention_mask"] as? [Int]))
        }
    }

    func testNewerManifestMajorVersionIsRefused() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let manifest: [String: Any] = ["manifest_version": "2.0", "artifacts": []]
        try JSONSerialization.data(withJSONObject: manifest).write(to: folder.appendingPathComponent("manifest.json"))
        try JSONSerialization.data(withJSONObject: vectors["preprocess"]!).write(to: folder.appendingPathComponent("preprocess.json"))
        XCTAssertThrowsError(try ExportFolder(url: folder)) { error in
            XCTAssertTrue("\(error)".contains("newer than this EdgeVLKit reads"))
        }
    }
}
