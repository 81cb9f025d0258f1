#!/usr/bin/env bash
# Issue 8's device checks as one prepared run: the GPU parity suite and `qwen bench --backend
# cuda` beside llama.cpp's CUDA build, on a lent GPU machine (the `device` tool). That machine
# has nvcc, cmake and python3 but no Rust and no network, takes at most 64 MiB per call, and a
# session gets about 15 minutes of it, so everything is built here and the run there is one
# command.
#
# Here:   scripts/gpu-device.sh pack          # -> target/device-kit/kit.tar.xz (~30 MiB): qwen
#                                             #    and the gpu_backends test built with --features
#                                             #    cuda,rocm, the tiny Qwen-2 files the tests use,
#                                             #    the 0.5B, 1.5B and tiny Qwen-1 headers, and
#                                             #    llama.cpp's source, trimmed
# There:  run(command="bash scripts/gpu-device.sh run", carry=["target/device-kit"], timeout_s=560)
#         -> $OUT/summary.md, parity.log, bench.json, llama-build.log
#
# Optional, for the real 0.5B greedy test (its 491 MB file does not fit one call):
# Here:   scripts/gpu-device.sh pack-model       # -> target/device-chunks/part00..partNN
# There:  for each part, back to back (a machine stays warm 30 s between calls):
#         run(command="bash scripts/gpu-device.sh take target/device-chunks/partNN",
#             carry=["target/device-chunks/partNN"])
#         then the `run` call above, which finds target/device-model/*.gguf (sha256 checked).
set -euo pipefail
cd "$(dirname "$0")/.."

kit=target/device-kit
model_05b=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
model_15b=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
chunk_bytes=$((56 * 1024 * 1024))

# The pinned llama.cpp of benches/compare_llamacpp.sh, without what a CUDA llama-bench build
# does not read (model vocabularies, docs, other backends, tests): 176 MB -> about 6 MB as xz.
llama_sources() {
  local src
  src=$(scripts/llamacpp-source.sh)
  local skip=(models docs media benches tests examples gguf-py pocs tools/ui)
  for b in cann et hexagon metal musa opencl openvino sycl virtgpu vulkan webgpu zdnn zendnn; do
    skip+=("ggml/src/ggml-$b")
  done
  tar -C "$src" -cJf "$1/llama.cpp.tar.xz" "${skip[@]/#/--exclude=./}" .
}

pack() {
  local stage=target/device-kit.stage
  rm -rf "$kit" "$stage" && mkdir -p "$kit" "$stage/hdr" "$stage/test-out"
  local out=target/device-build
  cargo build --release --features cuda,rocm --bin qwen --target-dir "$out"
  local test_bin
  test_bin=$(cargo test --release --features cuda,rocm --test gpu_backends --no-run \
    --target-dir "$out" --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu_backends" and m.get("executable"):
        print(m["executable"])')
  install -s "$out/release/qwen" "$stage/qwen"
  install -s "$test_bin" "$stage/gpu_backends"
  scripts/zeroed-model.sh header "$(scripts/fetch-models.sh 0.5b)" "$stage/hdr/${model_05b%.gguf}.hdr"
  scripts/zeroed-model.sh header "$(scripts/fetch-models.sh 1.5b)" "$stage/hdr/${model_15b%.gguf}.hdr"
  # The tiny checkpoints as the tests convert them (tests/common: tiny_gguf), which the test
  # binary takes from $QWEN_TEST_OUT there; Qwen-1's architecture travels as a header only
  # (its f32 file is 84 MB).
  local data="${QWEN_TESTDATA:-../shared/testdata}/models"
  cargo build --release --bin qwen-convert
  for ty in q8_0 q4_k; do
    target/release/qwen-convert "$data/qwen2-tiny" -t "$ty" --tokenizer "$data/qwen1-tiny/qwen.tiktoken" \
      -o "$stage/test-out/qwen2-tiny-$ty.gguf" >/dev/null
  done
  target/release/qwen-convert "$data/qwen1-tiny" -t q4_k -o "$stage/qwen1-tiny-q4_k.gguf" >/dev/null
  scripts/zeroed-model.sh header "$stage/qwen1-tiny-q4_k.gguf" "$stage/hdr/qwen1-tiny-q4_k.hdr"
  rm "$stage/qwen1-tiny-q4_k.gguf"
  llama_sources "$stage"
  tar -C "$stage" -cf - . | xz -T0 -6 >"$kit/kit.tar.xz"
  du -sh "$stage"/* "$kit/kit.tar.xz" >&2
  rm -rf "$stage"
}

pack_model() {
  local dir=target/device-chunks
  local src
  src=$(scripts/fetch-models.sh 0.5b)
  rm -rf "$dir" && mkdir -p "$dir"
  split -b "$chunk_bytes" -d "$src" "$dir/part"
  local n
  n=$(ls "$dir" | wc -l)
  # Every part says what it belongs to, so `take` can assemble and check without other state.
  for p in "$dir"/part*; do
    mkdir "$p.d" && mv "$p" "$p.d/data"
    echo "$model_05b $n $(sha256sum "$src" | cut -d' ' -f1)" >"$p.d/of"
    mv "$p.d" "$p"
  done
  echo "$n parts in $dir: carry each as target/device-chunks/partNN" >&2
}

# There: appends one part; the last one completes the file and checks its sha256.
take() {
  local part="$1" dst=target/device-model
  read -r name n sha <"$part/of"
  local idx=$((10#${part##*part}))
  mkdir -p "$dst"
  [ "$idx" -eq 0 ] && rm -f "$dst/$name.partial"
  local have
  have=$(stat -c %s "$dst/$name.partial" 2>/dev/null || echo 0)
  if [ "$have" -ne $((idx * chunk_bytes)) ]; then
    echo "part $idx: expected $((idx * chunk_bytes)) bytes before it, found $have" >&2
    exit 1
  fi
  cat "$part/data" >>"$dst/$name.partial"
  if [ "$idx" -eq $((n - 1)) ]; then
    echo "$sha  $dst/$name.partial" | sha256sum -c --quiet
    mv "$dst/$name.partial" "$dst/$name"
    echo "assembled $dst/$name" >&2
  else
    echo "part $idx of $n taken" >&2
  fi
}

# Unpacks an .xz tarball (with python's lzma where the machine has no xz).
untar_xz() {
  if command -v xz >/dev/null; then
    xz -dc "$1" | tar -C "$2" -xf -
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$1" "$2"
  fi
}

# Puts the CUDA driver and NVRTC on the loader's path under the names cudarc opens (libcuda.so,
# libnvrtc.so: a driver installs libcuda.so.1, a toolkit may lack the unversioned link), and
# NVRTC's directory too (it loads libnvrtc-builtins from there).
cuda_libs() {
  local libs=/tmp/qwen-cuda-libs path=""
  mkdir -p "$libs"
  local driver
  driver=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null |
    awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}' || true)
  if [ -z "$driver" ]; then
    driver=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -name 'libcuda.so.*' \
      -not -path '*/stubs/*' 2>/dev/null | head -1 || true)
  fi
  local nvrtc=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 /opt; do
    [ -d "$d" ] || continue
    nvrtc=$(find "$d" -name 'libnvrtc.so*' -type f -not -path '*/stubs/*' 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$nvrtc" ] && break
  done
  if [ -n "$driver" ]; then ln -sf "$driver" "$libs/libcuda.so"; fi
  if [ -n "$nvrtc" ]; then
    ln -sf "$nvrtc" "$libs/libnvrtc.so"
    path=":$(dirname "$nvrtc")"
  fi
  echo "libcuda: ${driver:-not found}; libnvrtc: ${nvrtc:-not found}"
  export LD_LIBRARY_PATH="$libs$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

build_llama() {
  local dir=/tmp/llama.cpp
  mkdir -p "$dir/src"
  untar_xz "$kit_dir/llama.cpp.tar.xz" "$dir/src"
  cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-native}" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  cmake --build "$dir/build" --target llama-bench -j "$(nproc)"
}

run() {
  local out="${OUT:-target/device-out}"
  mkdir -p "$out"
  kit_dir=/tmp/qwen-kit
  rm -rf "$kit_dir" /tmp/qwen-test && mkdir -p "$kit_dir"
  untar_xz "$kit/kit.tar.xz" "$kit_dir"
  cp -r "$kit_dir/test-out" /tmp/qwen-test
  local t0=$SECONDS
  stamp() { echo "[$((SECONDS - t0)) s] $*" | tee -a "$out/summary.md"; }
  echo "# GPU device run $(date -u +%FT%TZ)" >"$out/summary.md"
  nvidia-smi -L | tee -a "$out/summary.md" || true
  cuda_libs >>"$out/summary.md"
  (build_llama >"$out/llama-build.log" 2>&1; echo $? >/tmp/llama-build.rc) &
  local llama_pid=$!

  stamp "parity suite"
  local models_dir=target/device-model
  [ -d "$models_dir" ] || models_dir=/nonexistent
  set +e
  QWEN_GPU_HEADERS="$kit_dir/hdr" QWEN_TEST_OUT=/tmp/qwen-test QWEN_MODELS="$models_dir" \
    QWEN_REQUIRE_NVRTC=1 "$kit_dir/gpu_backends" --test-threads 1 --nocapture >"$out/parity.log" 2>&1
  stamp "parity exit $? ($(grep -c '^test .* ok$' "$out/parity.log") ok, \
$(grep -c 'FAILED\|panicked' "$out/parity.log") failed lines, $(grep -c SKIPPED "$out/parity.log") skip lines)"
  grep -E 'SKIPPED|panicked|items match|^test ' "$out/parity.log" >>"$out/summary.md"
  set -e

  for m in "$model_05b" "$model_15b"; do
    scripts/zeroed-model.sh expand "$kit_dir/hdr/${m%.gguf}.hdr" "/tmp/$m"
  done
  stamp "waiting for llama.cpp"
  wait "$llama_pid" || true
  local llama_bench=/tmp/llama.cpp/build/bin/llama-bench
  [ -x "$llama_bench" ] || { stamp "llama.cpp build failed: see llama-build.log"; tail -30 "$out/llama-build.log"; }
  stamp "benchmarks (p=${P:-512} n=${N:-128} r=${R:-3}, ${ROUNDS:-2} alternating rounds)"
  for m in "$model_05b" "$model_15b"; do
    for i in $(seq 1 "${ROUNDS:-2}"); do
      if [ -x "$llama_bench" ]; then
        "$llama_bench" -m "/tmp/$m" -ngl 99 -p "${P:-512}" -n "${N:-128}" -r "${R:-3}" -o json \
          >"$out/llama.$m.$i.json" 2>>"$out/llama-bench.log" ||
          stamp "llama-bench $m failed: $(tail -1 "$out/llama-bench.log")"
      fi
      "$kit_dir/qwen" bench --backend cuda -m "/tmp/$m" -p "${P:-512}" -n "${N:-128}" -r "${R:-3}" --json \
        >"$out/qwen.$m.$i.json" 2>>"$out/qwen-bench.log" ||
        stamp "qwen bench $m failed: $(tail -1 "$out/qwen-bench.log")"
    done
  done
  # What recording the launches as a graph gains: the 0.5B decode with graphs off.
  QWEN_GPU_GRAPHS=0 "$kit_dir/qwen" bench --backend cuda -m "/tmp/$model_05b" -p 0 -n "${N:-128}" \
    -r "${R:-3}" --json >"$out/qwen.nographs.json" 2>>"$out/qwen-bench.log" ||
    stamp "qwen bench without graphs failed: $(tail -1 "$out/qwen-bench.log")"
  # What copying the logits back costs: decode steps with the argmax taken on the device.
  "$kit_dir/qwen" bench --backend cuda -m "/tmp/$model_05b" -p 0 -n "${N:-128}" -r "${R:-3}" \
    --greedy-step --json >"$out/qwen.greedy.json" 2>>"$out/qwen-bench.log" ||
    stamp "qwen bench --greedy-step failed: $(tail -1 "$out/qwen-bench.log")"
  python3 - "$out" "${ROUNDS:-2}" "$model_05b" "$model_15b" <<'PY' | tee -a "$out/summary.md"
import json, statistics, sys
out, rounds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(path):
    try:
        return json.load(open(path))
    except Exception:
        return None
print("| model | prefill qwen / llama.cpp (tok/s) | decode qwen / llama.cpp (tok/s) |")
print("| --- | --- | --- |")
for m in models:
    q_pp, q_tg, l_pp, l_tg = [], [], [], []
    for i in range(1, rounds + 1):
        q = load(f"{out}/qwen.{m}.{i}.json")
        if q:
            q_pp.append(q["prefill_tps"]); q_tg.append(q["decode_tps"])
        for row in load(f"{out}/llama.{m}.{i}.json") or []:
            (l_pp if row["n_gen"] == 0 else l_tg).append(row["avg_ts"])
    med = lambda v: statistics.median(v) if v else float("nan")
    ratio = lambda a, b: f"**{med(a) / med(b):.2f}x** ({med(a):.1f} vs {med(b):.1f})" if a and b else f"{med(a):.1f} vs {med(b):.1f}"
    print(f"| {m} | {ratio(q_pp, l_pp)} | {ratio(q_tg, l_tg)} |")
off = load(f"{out}/qwen.nographs.json")
if off:
    print(f"\n{models[0]} decode without CUDA graphs: {off['decode_tps']:.1f} tok/s")
greedy = load(f"{out}/qwen.greedy.json")
if greedy:
    print(f"{models[0]} decode with the argmax on the device (--greedy-step): {greedy['decode_tps']:.1f} tok/s")
PY
  stamp "done"
}

case "${1:-}" in
  pack) pack ;;
  pack-model) pack_model ;;
  take) take "$2" ;;
  run) run ;;
  *)
    echo "usage: $0 pack | pack-model | take PART | run   (see the comment at the top)" >&2
    exit 2
    ;;
esac
