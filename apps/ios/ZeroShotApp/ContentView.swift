import EdgeVLKit
import PhotosUI
import SwiftUI

/// Pick a photo, type labels, see them ranked with the time each tower took.
struct ContentView: View {
    @State private var item: PhotosPickerItem?
    @State private var image: UIImage?
    @State private var labels = "cat, dog, car, coffee, rocket"
    @State private var template = "a photo of a {}."
    @State private var ranking: [LabelScore] = []
    @State private var status = "loading the export…"
    @State private var model: ZeroShotModel?

    var body: some View {
        NavigationStack {
            Form {
                PhotosPicker("Pick a photo", selection: $item, matching: .images)
                if let image { Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 240) }
                TextField("Labels (comma-separated)", text: $labels)
                TextField("Prompt template", text: $template)
                Button("Classify") { Task { classify() } }.disabled(model == nil || image == nil)
                Text(status).font(.footnote)
                ForEach(ranking, id: \.label) { entry in
                    HStack { Text(entry.label); Spacer(); Text(String(format: "%.4f", entry.score)).monospacedDigit() }
                }
            }
            .navigationTitle("Zero-shot")
        }
        .task { await load() }
        .onChange(of: item) { _, newItem in
            Task {
                if let data = try? await newItem?.loadTransferable(type: Data.self) { image = UIImage(data: data) }
            }
        }
    }

    func load() async {
        guard let folder = Bundle.main.url(forResource: "export", withExtension: nil) else {
            status = "add the export folder to the app bundle as \"export\""
            return
        }
        do {
            model = try await ZeroShotModel(folder: folder)
            status = "ready"
        } catch {
            status = "error: \(error)"
        }
    }

    func classify() {
        guard let model, let cgImage = image?.cgImage else { return }
        let names = labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        do {
            let (result, imageSeconds, textSeconds) = try model.classify(cgImage, labels: names, template: template)
            ranking = result
            status = String(format: "image tower %.1f ms · text tower %.1f ms", imageSeconds * 1000, textSeconds * 1000)
        } catch {
            status = "error: \(error)"
        }
    }
}
