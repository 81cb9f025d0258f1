#!/usr/bin/env bash
# Builds libqwen with the JNI glue (cargo --features jni, in target/jni so the default build is
# not disturbed), compiles the Java API and its JUnit 4 tests with javac, and runs them on the
# host JVM with -Xcheck:jni. tests/ffi_java.rs runs this script with the models set.
#
# Environment:
#   QWEN_TINY_MODEL   a small GGUF for most tests (tests/ffi_java.rs writes one); unset: skipped
#   QWEN_CONVERTED_TINY_MODEL   qwen2-tiny converted by qwen-convert; unset: skipped
#   QWEN_REAL_MODEL   the real Qwen2.5-Coder 0.5B GGUF; unset: skipped
#   JUNIT_JAR, HAMCREST_JAR   default: Debian's junit4 package (/usr/share/java)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target="${QWEN_JNI_TARGET_DIR:-$root/target/jni}"
junit="${JUNIT_JAR:-/usr/share/java/junit4.jar}"
hamcrest="${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}"
[ -f "$junit" ] || { echo "JUnit 4 jar not found at $junit (apt-get install junit4)" >&2; exit 3; }

CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --release --features jni --lib \
    --manifest-path "$root/Cargo.toml"
lib="$target/release/libqwen.so"

classes="$target/java-classes"
rm -rf "$classes"
mkdir -p "$classes"
javac -Xlint:all -Werror -d "$classes" -cp "$junit" $(find "$here/src" -name '*.java')

# -Xcheck:jni makes the JVM verify every JNI call of the glue; its warnings fail the run.
log="$target/java-test.log"
set +e
java -Xcheck:jni -Dqwen.library="$lib" \
    -Dqwen.tiny.model="${QWEN_TINY_MODEL:-}" -Dqwen.real.model="${QWEN_REAL_MODEL:-}" \
    -Dqwen.converted.model="${QWEN_CONVERTED_TINY_MODEL:-}" \
    -cp "$classes:$junit:$hamcrest" org.junit.runner.JUnitCore io.qwen.QwenTest 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if grep -q "WARNING in native method" "$log"; then
    echo "JNI check warnings (see above)" >&2
    exit 4
fi
exit "$rc"
