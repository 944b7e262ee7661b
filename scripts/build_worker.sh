#!/usr/bin/env bash
# Build llama.cpp's ggml-rpc-server and llama-server with RPC for this host's backend, from the
# same llama.cpp source as the pinned llama-cpp-python (so every host speaks one RPC protocol).
#
#   scripts/build_worker.sh [cuda|rocm|metal|vulkan|cpu] [--jobs N]
#
# Default backend: cuda if nvcc is found, rocm if hipcc is, metal on macOS, else cpu.
# Installs into $TIGHTWAD_CACHE/llama.cpp/<version>/bin (default ~/.cache/tightwad), where the
# agent looks by itself, and prints that directory (or point agents.binaries_dir / $TIGHTWAD_BIN_DIR elsewhere).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}/llama.cpp/$VERSION"
JOBS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu)"

detect() {
  if [[ "$(uname -s)" == "Darwin" ]]; then echo metal
  elif command -v nvcc >/dev/null 2>&1; then echo cuda
  elif command -v hipcc >/dev/null 2>&1 || [[ -d /opt/rocm ]]; then echo rocm
  else echo cpu; fi
}

BACKEND="${1:-$(detect)}"
[[ "${2:-}" == "--jobs" ]] && JOBS="$3"
case "$BACKEND" in
  cuda)   FLAGS=(-DGGML_CUDA=ON) ;;
  rocm)   FLAGS=(-DGGML_HIP=ON -DAMDGPU_TARGETS="${AMDGPU_TARGETS:-}") ;;
  metal)  FLAGS=(-DGGML_METAL=ON) ;;
  vulkan) FLAGS=(-DGGML_VULKAN=ON) ;;
  cpu)    FLAGS=() ;;
  *) echo "unknown backend $BACKEND (cuda, rocm, metal, vulkan, cpu)" >&2; exit 2 ;;
esac

SRC="$CACHE/src"
if [[ ! -d "$SRC/vendor/llama.cpp" ]]; then
  mkdir -p "$CACHE"
  ( cd "$CACHE" && python3 -m pip download --no-deps --no-binary :all: \
      "llama-cpp-python==$VERSION" -d . )
  mkdir -p "$SRC" && tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$SRC" --strip-components=1
fi

OUT="$CACHE/bin"  # where tightwad-agent looks (tightwad/agent/binaries.py)
BUILD="$CACHE/build-$BACKEND"
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_RPC=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF "${FLAGS[@]}" >&2
cmake --build "$BUILD" --target llama-server ggml-rpc-server rpc-server -j "$JOBS" >&2 \
  || cmake --build "$BUILD" --target llama-server rpc-server -j "$JOBS" >&2
mkdir -p "$OUT"
for b in ggml-rpc-server rpc-server llama-server; do
  [[ -x "$BUILD/bin/$b" ]] && cp "$BUILD/bin/$b" "$OUT/"
done
echo "$OUT"
