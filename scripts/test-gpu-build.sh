#!/usr/bin/env bash
# The GPU backends on a machine without a GPU: builds and lints features `cuda` and `rocm`, and
# runs the library's and the backend suite's tests with them. The CUDA kernels are really
# compiled (and, with clang, their HIP path too): NVRTC (a library, no GPU needed) comes from NVIDIA's PyPI wheel, fetched once into
# $QWEN_MODELS/../nvrtc (default ~/.cache/libqwen/nvrtc). The tests that need a device print
# `SKIPPED: ...` with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

nvrtc_version=12.9.86
cache="${QWEN_NVRTC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/libqwen/nvrtc}"
lib="$cache/$nvrtc_version/nvidia/cuda_nvrtc/lib"
if [ "$(uname -m)" = x86_64 ] && [ ! -e "$lib/libnvrtc.so.12" ]; then
  echo "fetching NVRTC $nvrtc_version from PyPI (nvidia-cuda-nvrtc-cu12)..." >&2
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    -d "$tmp" "nvidia-cuda-nvrtc-cu12==$nvrtc_version" >&2
  mkdir -p "$cache/$nvrtc_version"
  python3 -m zipfile -e "$tmp"/nvidia_cuda_nvrtc_cu12-*.whl "$cache/$nvrtc_version"
  rm -rf "$tmp"
fi
if [ -e "$lib/libnvrtc.so.12" ]; then
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # With NVRTC at hand, a kernel that does not compile fails the run (never a skip).
  export QWEN_REQUIRE_NVRTC=1
fi

# With a clang that has the amdgcn target (Debian's does), the HIP path of every kernel is
# compiled for AMD GPUs by clang's HIP front end in hiprtc's mode, and a failure fails the run.
if clang -print-targets 2>/dev/null | grep -q amdgcn; then
  export QWEN_REQUIRE_HIP_CLANG=1
fi

cargo clippy --release --features cuda,rocm --all-targets -- -D warnings
cargo test --release --features cuda,rocm --lib
cargo test --release --features cuda,rocm --test gpu_backends -- --nocapture
# Every command's --backend with the features built in (a missing driver, not a missing feature).
cargo test --release --features cuda,rocm --test cli every_model_command_takes_a_backend
