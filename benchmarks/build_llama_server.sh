#!/usr/bin/env bash
# Builds llama.cpp's C++ `llama-server` for benchmarks/server.py from the llama.cpp sources vendored in the
# llama-cpp-python sdist pinned in pyproject.toml, so that both run the same llama.cpp. Nothing of llama.cpp is
# committed: the sdist comes from PyPI (through pip's cache) and is built under ~/.cache/oxillama_py. Same build
# choices as .ci/run uses for llama-cpp-python: no OpenMP and, on x86_64, no AMX kernels; Release, no curl, only
# the llama-server target, -j2. Idempotent: when the binary exists it is only printed. The last line of output is
# the binary's path.   bash benchmarks/build_llama_server.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pin=$(grep -o 'llama-cpp-python==[0-9][0-9.]*' pyproject.toml | head -n 1)
version=${pin#*==}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/oxillama_py"
src="$cache/llama-server-src"
build="$cache/llama-server-build"
binary="$build/bin/llama-server"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$python" -m pip download --no-binary :all: --no-deps "$pin" -d "$tmp" >&2
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$src" --strip-components=1
fi

noamx=""
[ "$(uname -m)" = x86_64 ] && noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CFLAGS="$noamx" CXXFLAGS="$noamx" cmake -S "$src/vendor/llama.cpp" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$build" --config Release --target llama-server -j2 >&2
echo "$binary"
