#!/usr/bin/env bash
# Builds `qwen` and `qwen-convert` as single static executables for edge boxes (musl libc linked
# in, no shared library needed at run time, stripped) and checks them:
#
#   scripts/build-static.sh [x86_64|aarch64]...      (default: both)
#
# Outputs: target/static/qwen-<arch>, target/static/qwen-convert-<arch>. Copy one file to the
# device with the model and run it (`qwen-aarch64 chat -m model.gguf`); the kernels are picked at
# run time from the CPU's features (AVX2 / AVX-512 / AMX, NEON / dotprod), as in the normal build.
#
# Checks, per architecture: the ELF has no interpreter and no NEEDED library; `qwen` answers
# "What is 2+2?" with 4 on Qwen2.5-Coder-0.5B-Instruct (fetched by scripts/fetch-models.sh), run
# natively on x86_64 and under qemu-aarch64 on aarch64; on x86_64 its greedy completion is also
# byte-identical to the normal (glibc) build's. Installs the rustup targets; aarch64 needs
# gcc-aarch64-linux-gnu (the linker) and qemu-user (Debian packages, as scripts/test-aarch64.sh).
# Where a target or tool cannot be installed (no network to rustup, no apt), that architecture
# prints a visible SKIP line, as scripts/test-aarch64.sh does; a failed check always fails.
set -euo pipefail
cd "$(dirname "$0")/.."

archs=("$@")
((${#archs[@]})) || archs=(x86_64 aarch64)
out=target/static
mkdir -p "$out"

skip() {
    echo "SKIP: static $1 build not made: $2" >&2
    echo "::warning title=static $1 build skipped::$2"
}

# An executable with neither an ELF interpreter nor a NEEDED shared library.
check_static() {
    local bin=$1 headers
    headers=$(readelf -ld "$bin")
    if grep -q "INTERP" <<<"$headers" || grep -q "(NEEDED)" <<<"$headers"; then
        echo "FAIL: $bin is not static:" >&2
        grep -E "INTERP|NEEDED" <<<"$headers" >&2
        exit 1
    fi
}

model=$(scripts/fetch-models.sh 0.5b)
question="What is 2+2? Answer with one number."

for arch in "${archs[@]}"; do
    target=$arch-unknown-linux-musl
    runner=()
    case $arch in
    x86_64) ;;
    aarch64)
        command -v aarch64-linux-gnu-gcc >/dev/null || { skip "$arch" "no aarch64-linux-gnu-gcc"; continue; }
        command -v qemu-aarch64 >/dev/null || { skip "$arch" "no qemu-aarch64"; continue; }
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
        runner=(qemu-aarch64)
        ;;
    *)
        echo "usage: $0 [x86_64|aarch64]..." >&2
        exit 2
        ;;
    esac
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        rustup target add "$target" || { skip "$arch" "cannot install the Rust target $target"; continue; }
    fi
    # Its own target dir: other RUSTFLAGS/targets never invalidate ./target. (Cargo notes that a
    # musl target drops the cdylib crate type; the binaries need only the rlib.)
    CARGO_TARGET_DIR=$out/build cargo build --release --target "$target" \
        --config 'profile.release.strip="symbols"' --bin qwen --bin qwen-convert
    for bin in qwen qwen-convert; do
        cp "$out/build/$target/release/$bin" "$out/$bin-$arch"
        check_static "$out/$bin-$arch"
    done
    answer=$("${runner[@]}" "$out/qwen-$arch" run -m "$model" --chat -p "$question" -n 8 --temp 0 -t 2 2>/dev/null)
    if ! grep -qw 4 <<<"$answer"; then
        echo "FAIL: static qwen-$arch answered: $answer" >&2
        exit 1
    fi
    if [ "$arch" = x86_64 ]; then
        cargo build --release --bin qwen
        prompt="def fibonacci(n):"
        want=$(target/release/qwen run -m "$model" -p "$prompt" -n 24 --temp 0 -t 2 2>/dev/null)
        got=$("$out/qwen-$arch" run -m "$model" -p "$prompt" -n 24 --temp 0 -t 2 2>/dev/null)
        if [ "$got" != "$want" ]; then
            printf 'FAIL: static and glibc builds differ:\n%s\n---\n%s\n' "$got" "$want" >&2
            exit 1
        fi
    fi
    echo "ok: $out/qwen-$arch ($(du -h "$out/qwen-$arch" | cut -f1), static), $out/qwen-convert-$arch; answered: $answer"
done
