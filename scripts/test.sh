#!/usr/bin/env bash
# The project's test command: fetches the real models the tests need (once; cached in
# $QWEN_MODELS or ~/.cache/libqwen/models) and runs the whole test suite, optimized.
# Test data is read from $QWEN_TESTDATA (default ../shared/testdata).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh all >/dev/null
# `cargo test` builds the library only as an rlib; the C/C++/Java tests link libqwen.so and
# libqwen.a, so build every crate type first.
cargo build --release
cargo test --release "$@"
