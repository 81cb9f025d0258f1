#!/usr/bin/env bash
# A model file's stand-in for speed measurements where the file cannot go (the GPU device
# machine takes at most 64 MiB per call and reaches no network; the real GGUFs are 0.5-1.1 GB):
#
#   scripts/zeroed-model.sh header MODEL.gguf OUT.hdr    # here: the header (metadata, tokenizer,
#                                                        # tensor table) and the file's size
#   scripts/zeroed-model.sh expand OUT.hdr ZEROED.gguf   # there: the same file, tensor data zeroed
#
# The zeroed file has the real one's architecture, tensor shapes, block formats and offsets, so
# both runtimes load it and run exactly the same kernels over the same bytes; only the values are
# zero. GPU speed does not depend on them (weights are copied to the device, kernels do not skip
# zeros). On a CPU it does: the sparse file's pages all map one zero page, which caches
# unrealistically well, so CPU numbers must come from the real file. Output answers are
# meaningless (all logits equal).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  header)
    model="$2" out="$3"
    read -r offset size < <(cargo run -q --release --bin qwen -- info -m "$model" |
      python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["data_offset"], d["file_bytes"])')
    head -c "$offset" "$model" >"$out"
    echo "$size" >"$out.size"
    echo "$out: $offset header bytes of a $size-byte file" >&2
    ;;
  expand)
    hdr="$2" out="$3"
    cp "$hdr" "$out"
    truncate -s "$(cat "$hdr.size")" "$out"
    ;;
  *)
    echo "usage: $0 header MODEL.gguf OUT.hdr | expand OUT.hdr ZEROED.gguf" >&2
    exit 2
    ;;
esac
