plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.edgevl.zeroshot"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.edgevl.zeroshot"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        // ExecuTorch's AAR ships these two ABIs.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }
    // The export folder is packaged as assets as it is: manifest.json, preprocess.json,
    // labels.json (apps/android/labels.py) and executorch/<precision>/*.pte.
    sourceSets["main"].assets.srcDirs(rootProject.file(providers.gradleProperty("edgevlExport").get()))
    // .pte programs are memory-mapped by the runtime from a file; keep them uncompressed.
    androidResources { noCompress += "pte" }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("org.pytorch:executorch-android:${providers.gradleProperty("executorchVersion").get()}")
    // The AAR's JNI layer needs fbjni and soloader at run time.
    implementation("com.facebook.fbjni:fbjni:0.7.0")
    implementation("com.facebook.soloader:nativeloader:0.10.5")
    implementation("androidx.activity:activity-ktx:1.9.3")
}
