import CoreGraphics
import CoreML
import CoreVideo
import EdgeVLKit
import Foundation

/// An edgevl export's Core ML towers (manifest target "coreml") with the export's preprocessing
/// and tokenizer, from EdgeVLKit. The export folder is bundled with the app as "export".
final class ZeroShotModel {
    let export: ExportFolder
    let encoder: TextEncoder
    let image: MLModel
    let text: MLModel

    init(folder: URL, precision: String = "fp32") async throws {
        export = try ExportFolder(url: folder)
        encoder = try TextEncoder(tokenizerFolder: export.tokenizerFolder, config: export.preprocess)
        image = try await Self.load(export, component: "image", precision: precision)
        text = try await Self.load(export, component: "text", precision: precision)
    }

    static func load(_ export: ExportFolder, component: String, precision: String) async throws -> MLModel {
        let artifact = try export.artifact(component: component, target: "coreml", precision: precision)
        try export.verify(artifact)
        let compiled = try await MLModel.compileModel(at: export.url.appendingPathComponent(artifact.path))
        return try MLModel(contentsOf: compiled)
    }

    /// Labels best first for a photo or camera frame, and each tower's time in seconds.
    func classify(_ cgImage: CGImage, labels: [String], template: String) throws -> ([LabelScore], image: Double, text: Double) {
        let pre = export.preprocess
        let (rgb, width, height) = Self.rgbBytes(cgImage)
        let crop = try Preprocess.cropRGB(rgb, width: width, height: height, config: pre)
        let pixels: MLFeatureValue
        if image.modelDescription.inputDescriptionsByName["pixel_values"]?.type == .image {
            // The default export (`--coreml-input image`) folds the normalisation into the
            // package: it takes the cropped RGB pixels as they are.
            pixels = try MLFeatureValue(cgImage: Self.cgImage(rgb: crop, side: pre.crop), pixelsWide: pre.crop,
                                        pixelsHigh: pre.crop, pixelFormatType: kCVPixelFormatType_32BGRA, options: nil)
        } else {
            let tensor = Preprocess.normalise(crop, side: pre.crop, config: pre)
            let array = try MLMultiArray(shape: [1, 3, NSNumber(value: pre.crop), NSNumber(value: pre.crop)], dataType: .float32)
            tensor.withUnsafeBufferPointer { src in
                array.withUnsafeMutableBytes { dst, _ in dst.copyMemory(from: UnsafeRawBufferPointer(src)) }
            }
            pixels = MLFeatureValue(multiArray: array)
        }
        var start = Date()
        let imageOut = try image.prediction(from: MLDictionaryFeatureProvider(dictionary: ["pixel_values": pixels]))
        let imageSeconds = Date().timeIntervalSince(start)
        let prompts = ZeroShot.prompts(labels, template: template)
        let encoded = encoder.encode(prompts)
        let shape = [NSNumber(value: prompts.count), NSNumber(value: pre.contextLength)]
        let ids = try MLMultiArray(shape: shape, dataType: .int32)
        let mask = try MLMultiArray(shape: shape, dataType: .int32)
        for (row, (rowIds, rowMask)) in zip(encoded.inputIds, encoded.attentionMask).enumerated() {
            for col in 0..<pre.contextLength {
                ids[row * pre.contextLength + col] = NSNumber(value: rowIds[col])
                mask[row * pre.contextLength + col] = NSNumber(value: rowMask[col])
            }
        }
        let feeds: [String: Any] = ["input_ids": ids, "attention_mask": mask]
        start = Date()
        let textOut = try text.prediction(from: MLDictionaryFeatureProvider(dictionary: feeds.filter { pre.textInputs.contains($0.key) }))
        let textSeconds = Date().timeIntervalSince(start)
        let imageEmbedding = Self.floats(imageOut, model: image)
        let textEmbeddings = Self.floats(textOut, model: text)
        let dim = imageEmbedding.count
        let rows = (0..<prompts.count).map { Array(textEmbeddings[$0 * dim..<($0 + 1) * dim]) }
        return (ZeroShot.rank(labels: labels, image: imageEmbedding, prompts: rows), imageSeconds, textSeconds)
    }

    /// The tower's first output as Floats.
    static func floats(_ out: MLFeatureProvider, model: MLModel) -> [Float] {
        let name = model.modelDescription.outputDescriptionsByName.keys.sorted().first!
        let array = out.featureValue(for: name)!.multiArrayValue!
        return (0..<array.count).map { array[$0].floatValue }
    }

    /// A CGImage of `side` x `side` RGB bytes (opaque, sRGB).
    static func cgImage(rgb: [UInt8], side: Int) throws -> CGImage {
        var rgba = [UInt8](repeating: 255, count: side * side * 4)
        for i in 0..<side * side {
            rgba[i * 4] = rgb[i * 3]
            rgba[i * 4 + 1] = rgb[i * 3 + 1]
            rgba[i * 4 + 2] = rgb[i * 3 + 2]
        }
        let provider = CGDataProvider(data: Data(rgba) as CFData)!
        guard let made = CGImage(width: side, height: side, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: side * 4,
                                 space: CGColorSpace(name: CGColorSpace.sRGB)!,
                                 bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                                 provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
        else { throw ExportError.refused("cannot make a \(side)x\(side) image from the crop") }
        return made
    }

    /// RGB bytes of a CGImage drawn into an 8-bit sRGB context (alpha dropped).
    static func rgbBytes(_ image: CGImage) -> ([UInt8], Int, Int) {
        let width = image.width, height = image.height
        var rgba = [UInt8](repeating: 0, count: width * height * 4)
        let context = CGContext(data: &rgba, width: width, height: height, bitsPerComponent: 8, bytesPerRow: width * 4,
                                space: CGColorSpace(name: CGColorSpace.sRGB)!,
                                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
        context.draw(image, in: CGRect(x: 0, y: 0, width: width, height: height))
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<width * height {
            rgb[i * 3] = rgba[i * 4]
            rgb[i * 3 + 1] = rgba[i * 4 + 1]
            rgb[i * 3 + 2] = rgba[i * 4 + 2]
        }
        return (rgb, width, height)
    }
}
