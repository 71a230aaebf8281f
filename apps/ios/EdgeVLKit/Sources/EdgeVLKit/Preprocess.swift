import Foundation

/// preprocess.json of an edgevl export: how an image becomes the image tower's `pixel_values`
/// and how texts are cut and padded for the text tower.
public struct PreprocessConfig: Equatable {
    public let resize: Int
    public let crop: Int
    public let mean: [Double]
    public let std: [Double]
    public let interpolation: String
    public let resizeMode: String
    public let contextLength: Int
    public let textInputs: [String]
    public let padTokenId: Int

    static let knownKeys: Set<String> = ["resize", "crop", "mean", "std", "interpolation", "resize_mode",
                                         "context_length", "text_inputs", "pad_token_id", "extra"]

    /// Reads preprocess.json; refuses keys and values this package does not implement.
    public static func load(from url: URL) throws -> PreprocessConfig {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        guard let json = object as? [String: Any] else { throw ExportError.refused("\(url.path) is not a JSON object") }
        return try PreprocessConfig(json: json, path: url.path)
    }

    public init(json: [String: Any], path: String = "preprocess.json") throws {
        let unknown = Set(json.keys).subtracting(Self.knownKeys)
        guard unknown.isEmpty else {
            throw ExportError.refused("\(path) has keys this EdgeVLKit does not implement: \(unknown.sorted().joined(separator: ", "))")
        }
        guard let resize = json["resize"] as? Int, let crop = json["crop"] as? Int,
              let mean = json["mean"] as? [Double], let std = json["std"] as? [Double],
              mean.count == 3, std.count == 3, std.allSatisfy({ $0 > 0 }), crop > 0, crop <= resize
        else { throw ExportError.refused("\(path): resize, crop, mean and std (3 channels, std > 0) are needed") }
        self.resize = resize
        self.crop = crop
        self.mean = mean
        self.std = std
        interpolation = json["interpolation"] as? String ?? "bicubic"
        resizeMode = json["resize_mode"] as? String ?? "shortest_edge"
        contextLength = json["context_length"] as? Int ?? 77
        textInputs = json["text_inputs"] as? [String] ?? ["input_ids", "attention_mask"]
        padTokenId = json["pad_token_id"] as? Int ?? 0
        guard Resample.filters[interpolation] != nil, ["shortest_edge", "squash"].contains(resizeMode) else {
            throw ExportError.refused("\(path): interpolation \(interpolation) / resize_mode \(resizeMode) is not implemented")
        }
    }
}

/// Pillow's resampling of 8-bit RGB (src/libImaging/Resample.c: precompute_coeffs,
/// normalize_coeffs_8bpc, the horizontal then the vertical pass, each rounded to uint8), so the
/// bytes equal those of the reference, which preprocesses with Pillow.
public enum Resample {
    static let precisionBits = 32 - 8 - 2
    static let one = Double(1 << precisionBits)

    struct Filter {
        let support: Double
        let f: (Double) -> Double
    }

    static let filters: [String: Filter] = [
        "bilinear": Filter(support: 1.0) { x in
            let x = abs(x)
            return x < 1.0 ? 1.0 - x : 0.0
        },
        "bicubic": Filter(support: 2.0) { x in
            let a = -0.5
            let x = abs(x)
            if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 }
            if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0.0
        },
        "lanczos": Filter(support: 3.0) { x in
            func sinc(_ v: Double) -> Double { v == 0.0 ? 1.0 : sin(v * Double.pi) / (v * Double.pi) }
            return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0
        },
    ]

    /// Integer weights (held in Doubles: every sum stays exact) and source bounds per output pixel.
    static func coefficients(inSize: Int, outSize: Int, filter: Filter) -> (ksize: Int, bounds: [Int], weights: [Double]) {
        let scale = Double(inSize) / Double(outSize)
        let filterscale = max(scale, 1.0)
        let support = filter.support * filterscale
        let ksize = Int(ceil(support)) * 2 + 1
        var bounds = [Int](repeating: 0, count: outSize * 2)
        var weights = [Double](repeating: 0, count: outSize * ksize)
        for xx in 0..<outSize {
            let center = (Double(xx) + 0.5) * scale
            let ss = 1.0 / filterscale
            let xmin = max(Int(center - support + 0.5), 0)  // Int() truncates toward zero, as C's cast
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            var k = [Double](repeating: 0, count: max(xmax, 0))
            var ww = 0.0
            for x in 0..<max(xmax, 0) {
                let w = filter.f((Double(x + xmin) - center + 0.5) * ss)
                k[x] = w
                ww += w
            }
            for x in 0..<max(xmax, 0) {
                let v = ww != 0.0 ? k[x] / ww : k[x]
                weights[xx * ksize + x] = v < 0 ? (-0.5 + v * one).rounded(.towardZero) : (0.5 + v * one).rounded(.towardZero)
            }
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        return (ksize, bounds, weights)
    }

    static func clip8(_ ss: Double) -> UInt8 {
        if ss >= one * 256 { return 255 }
        if ss <= 0 { return 0 }
        return UInt8((ss / one).rounded(.down))
    }

    static func pass(_ src: [UInt8], width: Int, height: Int, outSize: Int, filter: Filter, horizontal: Bool) -> [UInt8] {
        let (ksize, bounds, weights) = coefficients(inSize: horizontal ? width : height, outSize: outSize, filter: filter)
        let outW = horizontal ? outSize : width
        let outH = horizontal ? height : outSize
        var out = [UInt8](repeating: 0, count: outW * outH * 3)
        for y in 0..<outH {
            for x in 0..<outW {
                let i = horizontal ? x : y
                let lo = bounds[i * 2]
                let n = bounds[i * 2 + 1]
                for c in 0..<3 {
                    var ss = one / 2
                    for t in 0..<n {
                        let p = horizontal ? (y * width + lo + t) * 3 + c : ((lo + t) * width + x) * 3 + c
                        ss += Double(src[p]) * weights[i * ksize + t]
                    }
                    out[(y * outW + x) * 3 + c] = clip8(ss)
                }
            }
        }
        return out
    }

    /// Pillow's `Image.resize((newWidth, newHeight), filter)` of row-major RGB bytes.
    public static func resize(_ rgb: [UInt8], width: Int, height: Int, newWidth: Int, newHeight: Int,
                              interpolation: String) throws -> [UInt8] {
        guard let filter = filters[interpolation] else {
            throw ExportError.refused("interpolation \(interpolation) is not implemented; use bilinear, bicubic or lanczos")
        }
        var data = rgb
        var w = width
        if newWidth != width {
            data = pass(data, width: w, height: height, outSize: newWidth, filter: filter, horizontal: true)
            w = newWidth
        }
        if newHeight != height {
            data = pass(data, width: w, height: height, outSize: newHeight, filter: filter, horizontal: false)
        }
        return data
    }
}

public enum Preprocess {
    /// The resized, center-cropped RGB bytes `[crop, crop, 3]` of an image, as preprocess.json says.
    public static func cropRGB(_ rgb: [UInt8], width: Int, height: Int, config: PreprocessConfig) throws -> [UInt8] {
        var newW = config.resize
        var newH = config.resize
        if config.resizeMode == "shortest_edge" {
            // Python's int(): truncation, as the reference.
            if width <= height { newH = Int(Double(config.resize * height) / Double(width)) }
            else { newW = Int(Double(config.resize * width) / Double(height)) }
        }
        let resized = (newW == width && newH == height) ? rgb
            : try Resample.resize(rgb, width: width, height: height, newWidth: newW, newHeight: newH,
                                  interpolation: config.interpolation)
        // torchvision's center crop: Python's round(), halves to even.
        let top = Int((Double(newH - config.crop) / 2.0).rounded(.toNearestOrEven))
        let left = Int((Double(newW - config.crop) / 2.0).rounded(.toNearestOrEven))
        var out = [UInt8](repeating: 0, count: config.crop * config.crop * 3)
        for y in 0..<config.crop {
            let from = ((top + y) * newW + left) * 3
            out.replaceSubrange(y * config.crop * 3..<(y + 1) * config.crop * 3, with: resized[from..<from + config.crop * 3])
        }
        return out
    }

    /// uint8 `[side, side, 3]` -> float32 `[3, side, side]`: (x / 255 - mean) / std, in Float as numpy's float32.
    public static func normalise(_ crop: [UInt8], side: Int, config: PreprocessConfig) -> [Float] {
        var out = [Float](repeating: 0, count: 3 * side * side)
        for c in 0..<3 {
            let mean = Float(config.mean[c])
            let std = Float(config.std[c])
            for i in 0..<side * side {
                out[c * side * side + i] = (Float(crop[i * 3 + c]) / Float(255) - mean) / std
            }
        }
        return out
    }
}
