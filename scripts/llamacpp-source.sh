#!/usr/bin/env bash
# The pinned llama.cpp our benchmarks compare against (ggml-org/llama.cpp@0c1e57098, as the
# PyPI sdist llama-cpp-python==0.3.36 vendors it): downloads the sdist once into DIR/sdist,
# checks its sha256, unpacks it and prints the llama.cpp source directory.
#
#   scripts/llamacpp-source.sh [DIR]     (default target/llamacpp)
#
# The file is fetched directly: `pip download --no-binary :all:` would also build the sdist's
# build dependencies (cmake among them) from source just to read its metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/llamacpp}"
name=llama_cpp_python-0.3.36
url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/$name.tar.gz
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
sdist="$dir/sdist/$name.tar.gz"
if [ ! -f "$sdist" ]; then
  mkdir -p "$dir/sdist"
  curl -sSfL --retry 3 -o "$sdist.tmp" "$url"
  mv "$sdist.tmp" "$sdist"
fi
echo "$sha  $sdist" | sha256sum -c --quiet
src="$dir/$name/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || tar -xzf "$sdist" -C "$dir"
echo "$src"
