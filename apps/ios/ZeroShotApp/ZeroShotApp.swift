import SwiftUI

@main
struct ZeroShotApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
