import Foundation

public struct LabelScore: Equatable {
    public let label: String
    public let score: Double
}

public enum ZeroShot {
    /// The prompt of each label, e.g. "a photo of a {}." -> "a photo of a cat.".
    public static func prompts(_ labels: [String], template: String = "a photo of a {}.") -> [String] {
        labels.map { template.replacingOccurrences(of: "{}", with: $0) }
    }

    /// Labels best first by the cosine (the towers' outputs are L2-normalised) of the image's
    /// embedding to each prompt's, summed in Double as the reference does; ties keep label order.
    public static func rank(labels: [String], image: [Float], prompts: [[Float]]) -> [LabelScore] {
        let scores = prompts.map { row in zip(image, row).reduce(0.0) { $0 + Double($1.0) * Double($1.1) } }
        return labels.indices
            .sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
            .map { LabelScore(label: labels[$0], score: scores[$0]) }
    }
}
