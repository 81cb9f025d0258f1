#!/usr/bin/env bash
# Tests of `qwen serve` through real HTTP clients: builds the binary, converts the tiny test model,
# installs the official `openai` client, pytest and Playwright into a venv under target/, and runs
# tests/server/ (each test module starts its own server on a free loopback port and stops it):
#   test_api.py    chat, streaming, stop strings, /v1/completions, tokenize, errors, auth, CORS, 503
#   test_tools.py  both function-calling dialects, plain and streaming (Qwen2.5-Coder-0.5B)
#   test_load.py   32 concurrent clients x 4 streaming requests on the tiny model (load_test.py)
#   test_web.py    the chat page in headless Chromium (Debian's `chromium`; skipped if absent
#                  outside CI); screenshot in target/server-web.png
# Extra arguments go to pytest (e.g. `-k stream`, or test files to run only those). The real
# model is fetched if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cargo build --release --bin qwen --bin qwen-convert

venv=target/server-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import openai, pytest, playwright" 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check openai pytest playwright
fi

# The tiny model (random weights, Qwen-2 architecture, Qwen's real tokenizer), converted once.
testdata=${QWEN_TESTDATA:-$root/../shared/testdata}
mkdir -p target/server-models
tiny=target/server-models/qwen2-tiny-f32.gguf
if [ ! -f "$tiny" ] || [ target/release/qwen-convert -nt "$tiny" ]; then
  target/release/qwen-convert "$testdata/models/qwen2-tiny" -o "$tiny" --type f32 \
    --tokenizer "$testdata/models/qwen1-tiny/qwen.tiktoken" >/dev/null
fi

export QWEN_BIN=$root/target/release/qwen
export QWEN_TINY_GGUF=$root/$tiny
export QWEN_REAL_GGUF=${QWEN_REAL_GGUF:-$(scripts/fetch-models.sh 0.5b)}
export QWEN_SCREENSHOT=$root/target/server-web.png

# Test files or folders among the arguments replace the default of all of tests/server.
targets=(tests/server)
for a in "$@"; do
  if [ -e "${a%%::*}" ]; then targets=(); break; fi
done
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${targets[@]}" "$@"
