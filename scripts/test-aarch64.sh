#!/usr/bin/env bash
# Cross-builds the crate for aarch64-unknown-linux-gnu and runs the quant tests (the scalar
# reference and its parity with the NEON and NEON+dotprod kernels) under qemu-aarch64.
#
# Installs what is missing: the rustup target, and on Debian/Ubuntu the packages
# gcc-aarch64-linux-gnu and qemu-user. If that is impossible (no rustup, no apt, no network), it
# prints a visible SKIP line and exits 0, so CI shows the skip instead of failing.
#
# Extra arguments go to `cargo test` (e.g. `scripts/test-aarch64.sh --release`). The build goes to
# $CARGO_TARGET_DIR, default ./target-aarch64, so it never invalidates the host's ./target.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

skip() {
    echo "SKIP: aarch64 quant tests not run: $*" >&2
    # GitHub Actions shows this as an annotation; elsewhere it is just another visible line.
    echo "::warning title=aarch64 tests skipped::$*"
    exit 0
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "installing the Rust target $TARGET" >&2
    rustup target add "$TARGET" || skip "cannot install the Rust target $TARGET"
fi

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || skip "not root and no sudo to install ${missing[*]}"
        sudo=(sudo)
    fi
    echo "installing ${missing[*]}" >&2
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}"; } ||
        skip "cannot install ${missing[*]}"
fi
[ -d "$SYSROOT" ] || skip "no aarch64 sysroot at $SYSROOT"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-cpu max` emulates every feature qemu knows (DotProd among them), so the parity tests cover
# both NEON builds; QWEN_EXPECT_KERNELS makes a test fail if one of them is not detected.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L $SYSROOT"
export QWEN_EXPECT_KERNELS="${QWEN_EXPECT_KERNELS-neon,neon+dotprod}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-aarch64}"
exec cargo test --target "$TARGET" --lib quant "$@"
