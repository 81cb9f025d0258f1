#!/usr/bin/env bash
# Side-by-side speed of libqwen and llama.cpp on the same GGUF file, same threads, same lengths,
# on this machine. Not part of CI (building llama.cpp takes minutes).
#
#   benches/compare_llamacpp.sh [MODEL.gguf]
#   env: THREADS (default: nproc), P (prompt tokens, 512), N (generated tokens, 128),
#        D (tokens already in the cache before each run, llama-bench's -d: 0),
#        R (repetitions per run, 3), ROUNDS (alternating rounds, 3), LLAMA_DIR (build dir)
# Both runtimes use an F16 KV cache (llama.cpp's default, and ours for a quantized file).
#
# llama.cpp is the pinned ggml-org/llama.cpp@0c1e57098 that the PyPI sdist
# llama-cpp-python==0.3.36 vendors; llama-bench is built with clang (gcc 12 miscompiles the
# AMX path). The two runtimes alternate so that drift in machine load hits both alike.
set -euo pipefail
cd "$(dirname "$0")/.."

model="${1:-$(scripts/fetch-models.sh 0.5b)}"
threads="${THREADS:-$(nproc)}"
p="${P:-512}"
n="${N:-128}"
d="${D:-0}"
r="${R:-3}"
rounds="${ROUNDS:-3}"
llama_dir="${LLAMA_DIR:-$PWD/target/llamacpp}"
llama_bench="$llama_dir/build/bin/llama-bench"

need() { command -v "$1" >/dev/null 2>&1; }
install_tools() {
  local missing=()
  need clang || missing+=(clang)
  need cmake || missing+=(cmake)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}..." >&2
    apt-get install -y "${missing[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
  fi
}

if [ ! -x "$llama_bench" ]; then
  install_tools
  src=$(scripts/llamacpp-source.sh "$llama_dir")
  cmake -S "$src" -B "$llama_dir/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF >&2
  cmake --build "$llama_dir/build" --target llama-bench -j "$(nproc)" >&2
fi

cargo build --release --bin qwen >&2
out=$(mktemp -d)
# Runs a command with stdout to $1, and appends its peak RSS (KiB, from the kernel's rusage of
# the child) to $1.rss: both runtimes are measured the same way, whatever they report themselves.
with_rss() {
  local dst="$1"; shift
  python3 -c 'import resource, subprocess, sys
with open(sys.argv[1], "w") as f:
    rc = subprocess.call(sys.argv[2:], stdout=f)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)' "$dst" "$@" >>"$dst.rss"
}
for i in $(seq 1 "$rounds"); do
  echo "round $i/$rounds: llama.cpp" >&2
  with_rss "$out/llama.$i.json" "$llama_bench" -m "$model" -t "$threads" -p "$p" -n "$n" -d "$d" -r "$r" -o json
  echo "round $i/$rounds: libqwen" >&2
  with_rss "$out/qwen.$i.json" target/release/qwen bench -m "$model" -t "$threads" -p "$p" -n "$n" -d "$d" -r "$r" --json
done

python3 - "$out" "$rounds" "$model" "$threads" "$p" "$n" "$d" <<'PY'
import json, statistics, sys, platform
out, rounds, model, threads, p, n, d = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
at = f" @ d{d}" if d else ""
ll_pp, ll_tg, q_pp, q_tg, q_load, q_share = [], [], [], [], [], []
rss = lambda who: max(int(open(f"{out}/{who}.{i}.json.rss").read().split()[-1]) for i in range(1, rounds + 1)) / 1024
for i in range(1, rounds + 1):
    for row in json.load(open(f"{out}/llama.{i}.json")):
        (ll_pp if row["n_gen"] == 0 else ll_tg).append(row["avg_ts"])
    q = json.load(open(f"{out}/qwen.{i}.json"))
    if int(p): q_pp.append(q["prefill_tps"])
    if int(n): q_tg.append(q["decode_tps"]); q_share.append(q["decode_tps"] / q["bandwidth_bound_tps"])
    q_load.append(q["load_ms"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
m = statistics.mean
print(f"model {model}\ncpu {cpu}, threads {threads}, rounds {rounds}")
print(f"{'':10} {'libqwen tok/s':>14} {'llama.cpp tok/s':>16} {'ratio':>7}")
# P=0 or N=0 skips that test in both runtimes.
if q_pp: print(f"{'pp'+p+at:10} {m(q_pp):14.2f} {m(ll_pp):16.2f} {m(q_pp)/m(ll_pp):7.2f}")
if q_tg: print(f"{'tg'+n+at:10} {m(q_tg):14.2f} {m(ll_tg):16.2f} {m(q_tg)/m(ll_tg):7.2f}")
print(f"{'peak RSS':10} {rss('qwen'):11.0f} MiB {rss('llama'):13.0f} MiB {rss('qwen')/rss('llama'):7.2f}")
# Load time and the share of the bound: medians over the rounds (one slow round is the
# machine, not the code); the last round's bytes and bandwidth for context.
print(f"libqwen ({q['kernels']} kernels): load {statistics.median(q_load):.1f} ms", end="")
if q_share:
    print(f", decode at {100 * statistics.median(q_share):.0f}% of the bandwidth bound "
          f"({q['weight_bytes_per_token'] / 1e6:.0f} MB read per token; last round's read bandwidth {q['read_bandwidth_gbs']:.1f} GB/s)", end="")
print()
PY
rm -rf "$out"
