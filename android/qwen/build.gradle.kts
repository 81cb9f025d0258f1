// An Android library module over the same JNI glue as bindings/java: the Java API sources are
// shared, the native library is libqwen.so built by cargo-ndk for each ABI.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

val repoRoot = rootProject.projectDir.parentFile
val rustJniLibs = layout.buildDirectory.dir("rustJniLibs")

android {
    namespace = "io.qwen.android"
    compileSdk = 34
    ndkVersion = "26.3.11579264"

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    sourceSets {
        getByName("main") {
            java.srcDirs("../../bindings/java/src/main/java", "src/main/kotlin")
            jniLibs.srcDirs(rustJniLibs)
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    kotlinOptions {
        jvmTarget = "11"
    }
}

dependencies {
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
}

// cargo ndk -t arm64-v8a -t x86_64 -o build/rustJniLibs build --release --features jni --lib
val cargoNdk by tasks.registering(Exec::class) {
    description = "Builds libqwen.so (with the JNI glue) for each Android ABI with cargo-ndk."
    workingDir = repoRoot
    commandLine(
        "cargo", "ndk",
        "-t", "arm64-v8a", "-t", "x86_64",
        "-o", rustJniLibs.get().asFile.absolutePath,
        "build", "--release", "--features", "jni", "--lib",
    )
    inputs.dir(File(repoRoot, "src"))
    inputs.file(File(repoRoot, "Cargo.toml"))
    outputs.dir(rustJniLibs)
}

tasks.named("preBuild") { dependsOn(cargoNdk) }
