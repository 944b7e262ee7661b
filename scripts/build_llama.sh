#!/usr/bin/env bash
# Builds, from one pinned llama-cpp-python sdist, both:
#   1. the Python binding wheel (llama.cpp compiled with GGML_RPC=ON), and
#   2. the `llama-server` and `ggml-rpc-server` binaries from the sdist's own vendor/llama.cpp,
# into a cache keyed by version, so the embedded engine, the rpc-servers and the peer
# llama-server run the same ggml. Idempotent: a second run with a warm cache does nothing.
#
# Usage: scripts/build_llama.sh [wheel|bin|all]   (default: all)
# Prints nothing but progress on stderr; the cache root is $TIGHTWAD_CACHE or ~/.cache/tightwad.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}"
ROOT="$CACHE/llama.cpp/$VERSION"
WHAT="${1:-all}"
JOBS="${TIGHTWAD_BUILD_JOBS:-$(nproc)}"
PY="${PYTHON:-python3}"
mkdir -p "$ROOT"

sdist() {
  local tgz="$ROOT/llama_cpp_python-$VERSION.tar.gz"
  if [[ ! -f "$tgz" ]]; then
    echo "build_llama: downloading llama-cpp-python==$VERSION sdist" >&2
    "$PY" -m pip download --no-deps --no-binary :all: -d "$ROOT" "llama-cpp-python==$VERSION" >&2
  fi
  if [[ ! -d "$ROOT/src" ]]; then
    rm -rf "$ROOT/src.tmp" && mkdir -p "$ROOT/src.tmp"
    tar xzf "$tgz" -C "$ROOT/src.tmp" --strip-components=1
    mv "$ROOT/src.tmp" "$ROOT/src"
  fi
}

wheel() {
  if ls "$ROOT"/wheel/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then return; fi
  sdist
  echo "build_llama: building the binding wheel with GGML_RPC=ON (about 5 minutes on 2 cores)" >&2
  rm -rf "$ROOT/wheel.tmp"
  CMAKE_ARGS="-DGGML_RPC=ON -DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
    "$PY" -m pip wheel --no-deps -w "$ROOT/wheel.tmp" "$ROOT/src" >&2
  mv "$ROOT/wheel.tmp" "$ROOT/wheel"
}

binaries() {
  if [[ -x "$ROOT/bin/llama-server" && -x "$ROOT/bin/ggml-rpc-server" ]]; then return; fi
  sdist
  echo "build_llama: building llama-server and ggml-rpc-server (about 5 minutes on 2 cores)" >&2
  local b="$ROOT/build"
  cmake -S "$ROOT/src/vendor/llama.cpp" -B "$b" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON \
    -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build "$b" --target llama-server ggml-rpc-server -j "$JOBS" >&2
  rm -rf "$ROOT/bin.tmp" && mkdir -p "$ROOT/bin.tmp"
  cp "$b/bin/llama-server" "$b/bin/ggml-rpc-server" "$ROOT/bin.tmp/"
  mv "$ROOT/bin.tmp" "$ROOT/bin"
  rm -rf "$b"
}

case "$WHAT" in
  wheel) wheel; ls "$ROOT"/wheel/*.whl ;;
  bin) binaries; echo "$ROOT/bin" ;;
  all) wheel; binaries; ls "$ROOT"/wheel/*.whl; echo "$ROOT/bin" ;;
  *) echo "usage: $0 [wheel|bin|all]" >&2; exit 2 ;;
esac
