import CryptoKit
import Foundation

public enum ExportError: Error, CustomStringConvertible {
    case refused(String)
    case noArtifact(String)

    public var description: String {
        switch self {
        case .refused(let message), .noArtifact(let message): return message
        }
    }
}

/// One artifact entry of manifest.json.
public struct Artifact: Equatable {
    public let target: String
    public let precision: String
    public let component: String
    public let path: String
    public let sha256: String
    public let files: [String]
    public let verified: String
    public let parityPassed: Bool
}

/// An export folder: its manifest (major version 1), preprocess.json and tokenizer folder.
public struct ExportFolder {
    public static let supportedMajor = 1
    public let url: URL
    public let artifacts: [Artifact]
    public let preprocess: PreprocessConfig

    public init(url: URL) throws {
        self.url = url
        let manifestURL = url.appendingPathComponent("manifest.json")
        guard let manifest = try? JSONSerialization.jsonObject(with: Data(contentsOf: manifestURL)) as? [String: Any],
              let entries = manifest["artifacts"] as? [[String: Any]]
        else { throw ExportError.refused("\(manifestURL.path) is missing or not an edgevl manifest; pass the export folder") }
        let version = manifest["manifest_version"] as? String ?? "1.0"
        guard let major = Int(version.split(separator: ".").first ?? "") else {
            throw ExportError.refused("manifest_version \(version) is not MAJOR.MINOR; re-export with edgevl")
        }
        guard major <= Self.supportedMajor else {
            throw ExportError.refused("manifest_version \(version) is newer than this EdgeVLKit reads (\(Self.supportedMajor).x); update the app")
        }
        artifacts = try entries.map { entry in
            guard let target = entry["target"] as? String, let precision = entry["precision"] as? String,
                  let component = entry["component"] as? String, let path = entry["path"] as? String,
                  let sha256 = entry["sha256"] as? String
            else { throw ExportError.refused("\(manifestURL.path): an artifact lacks target, precision, component, path or sha256") }
            let parity = entry["parity"] as? [String: Any] ?? [:]
            return Artifact(target: target, precision: precision, component: component, path: path, sha256: sha256,
                            files: entry["files"] as? [String] ?? [path], verified: entry["verified"] as? String ?? "not-run",
                            parityPassed: parity["passed"] as? Bool ?? false)
        }
        preprocess = try PreprocessConfig.load(from: url.appendingPathComponent("preprocess.json"))
    }

    public var tokenizerFolder: URL { url.appendingPathComponent("tokenizer") }

    /// The `component` artifact of `target` at `precision`, its files present.
    public func artifact(component: String, target: String = "coreml", precision: String = "fp32") throws -> Artifact {
        guard let found = artifacts.first(where: { $0.component == component && $0.target == target && $0.precision == precision }) else {
            let have = artifacts.filter { $0.component == component }.map { "\($0.target)/\($0.precision)" }
            throw ExportError.noArtifact("the export has no \(target)/\(precision) \(component) artifact; it has: \(have.joined(separator: ", "))")
        }
        for file in found.files where !FileManager.default.fileExists(atPath: url.appendingPathComponent(file).path) {
            throw ExportError.refused("\(file) is listed in the manifest but missing; copy the whole export folder")
        }
        return found
    }

    /// Refuses an artifact file whose sha256 differs from the manifest's (single-file artifacts;
    /// a Core ML .mlpackage is a folder, whose manifest hash is the exporter's to define).
    public func verify(_ artifact: Artifact) throws {
        let fileURL = url.appendingPathComponent(artifact.path)
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: fileURL.path, isDirectory: &isFolder), !isFolder.boolValue else { return }
        let digest = SHA256.hash(data: try Data(contentsOf: fileURL)).map { String(format: "%02x", $0) }.joined()
        guard digest == artifact.sha256 else {
            throw ExportError.refused("\(artifact.path): sha256 differs from the manifest's; copy the export again")
        }
    }
}
