import Foundation
import Hub
import Tokenizers

/// Texts -> the text tower's inputs, with the export's tokenizer/tokenizer.json through Hugging
/// Face swift-transformers: truncated as Python tokenizers' `enable_truncation(max_length)` does
/// for one sequence (special tokens kept), padded with pad_token_id to context_length.
public final class TextEncoder {
    let tokenizer: Tokenizer
    public let config: PreprocessConfig

    /// tokenizer_config.json is optional in an export: where it is missing, or has no
    /// tokenizer_class, the class and lower-casing are read from tokenizer.json's model type and
    /// normalizer (what swift-transformers needs to pick its tokenizer).
    public init(tokenizerFolder: URL, config: PreprocessConfig) throws {
        let dataURL = tokenizerFolder.appendingPathComponent("tokenizer.json")
        guard let data = try JSONSerialization.jsonObject(with: Data(contentsOf: dataURL)) as? [NSString: Any] else {
            throw ExportError.refused("\(dataURL.path) is not a tokenizer.json")
        }
        let configURL = tokenizerFolder.appendingPathComponent("tokenizer_config.json")
        var tokenizerConfig = ((try? JSONSerialization.jsonObject(with: Data(contentsOf: configURL))) as? [NSString: Any]) ?? [:]
        if tokenizerConfig["tokenizer_class" as NSString] == nil {
            let type = (data["model" as NSString] as? [NSString: Any])?["type" as NSString] as? String ?? ""
            guard let name = ["WordPiece": "BertTokenizer", "BPE": "GPT2Tokenizer", "Unigram": "T5Tokenizer"][type] else {
                throw ExportError.refused("\(dataURL.path): model type \(type) has no swift-transformers tokenizer")
            }
            tokenizerConfig["tokenizer_class" as NSString] = name
        }
        if tokenizerConfig["do_lower_case" as NSString] == nil,
           let lowercase = (data["normalizer" as NSString] as? [NSString: Any])?["lowercase" as NSString] as? Bool {
            tokenizerConfig["do_lower_case" as NSString] = lowercase
        }
        tokenizer = try AutoTokenizer.from(tokenizerConfig: Config(tokenizerConfig), tokenizerData: Config(data))
        self.config = config
    }

    /// One text's ids, cut to context_length with the special tokens kept.
    public func ids(_ text: String) -> [Int] {
        let length = config.contextLength
        let full = tokenizer.encode(text: text, addSpecialTokens: true)
        if full.count <= length { return full }
        let raw = tokenizer.encode(text: text, addSpecialTokens: false)
        let added = full.count - raw.count
        guard added < length, let start = (0...(full.count - raw.count)).first(where: { Array(full[$0..<$0 + raw.count]) == raw })
        else { return Array(full.prefix(length)) }
        return Array(full[..<start]) + Array(raw.prefix(length - added)) + Array(full[(start + raw.count)...])
    }

    /// `[n][context_length]` input_ids and attention_mask.
    public func encode(_ texts: [String]) -> (inputIds: [[Int]], attentionMask: [[Int]]) {
        var ids: [[Int]] = []
        var mask: [[Int]] = []
        for text in texts {
            let tokens = self.ids(text)
            let pad = config.contextLength - tokens.count
            ids.append(tokens + [Int](repeating: config.padTokenId, count: pad))
            mask.append([Int](repeating: 1, count: tokens.count) + [Int](repeating: 0, count: pad))
        }
        return (ids, mask)
    }
}
