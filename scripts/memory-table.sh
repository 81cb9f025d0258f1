#!/usr/bin/env bash
# Measures the README's memory table: peak resident memory of `qwen run --batch-file` with B
# sequences of context L (every sequence's KV cache is committed at session creation, so one
# short prompt per sequence shows the full footprint) for the f16 and q8 KV caches.
# Usage: scripts/memory-table.sh [MODEL.gguf]   (default: the fetched 0.5B)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-${QWEN_MODELS:-$HOME/.cache/libqwen/models}/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
qwen=target/release/qwen
[ -x "$qwen" ] || cargo build --release --bin qwen >/dev/null
prompts=$(mktemp)
trap 'rm -f "$prompts"' EXIT
echo "| KV cache | batch | context 512 | context 2048 | context 8192 |"
echo "|---|---:|---:|---:|---:|"
for kv in f16 q8; do
  for b in 1 4 16; do
    for _ in $(seq "$b"); do echo Hi; done >"$prompts"
    row="| $kv | $b |"
    for ctx in 512 2048 8192; do
      line=$("$qwen" run -m "$model" --batch-file "$prompts" --parallel "$b" -n 1 -c "$ctx" \
        --kv-cache "$kv" --temp 0 -t 2 2>&1 >/dev/null | tail -n 1)
      kvmib=$(sed -n 's/.*KV cache \([0-9.]*\) MiB.*/\1/p' <<<"$line")
      peak=$(sed -n 's/.*peak memory \([0-9.]*\) MiB.*/\1/p' <<<"$line")
      row="$row $peak MiB (KV $kvmib) |"
    done
    echo "$row"
  done
done
