#!/usr/bin/env bash
# Builds llama.cpp ONCE per backend, from the pinned llama-cpp-python sdist's vendored source, into
#   $TIGHTWAD_CACHE/llama.cpp/<version>/<backend>/{bin,wheel,build.env}   (default ~/.cache/tightwad)
# One cmake build (shared libraries, RPATH $ORIGIN, GGML_RPC=ON + the backend's flags) yields
# libllama/libggml*, llama-server and ggml-rpc-server; the binding wheel is the sdist's pure-Python
# package (LLAMA_BUILD=OFF) with those same shared libraries added under llama_cpp/lib. So the
# embedded engine, the rpc-servers and the peer llama-server run the same ggml, built once.
#
# Usage: scripts/build_llama.sh [wheel|bin|all|backend]   (default: all)
#   backend: print the backend that would be built for, and exit.
# The backend is TIGHTWAD_BACKEND or detected (scripts/backend.sh), printed before the build. A
# missing toolkit exits 3 with what to install, before anything is written to the cache; a build
# is assembled in <backend>.tmp and moved into place only when complete. Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/backend.sh
source "$HERE/backend.sh"

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}"
ROOT="$CACHE/llama.cpp/$VERSION"
WHAT="${1:-all}"
JOBS="${TIGHTWAD_BUILD_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}"
PY="${PYTHON:-python3}"

case "$WHAT" in wheel|bin|all|backend) ;; *)
  echo "usage: $0 [wheel|bin|all|backend] (got '$WHAT')" >&2; exit 2 ;;
esac
BACKEND="$(tightwad_backend)"
if [[ "$WHAT" == backend ]]; then echo "$BACKEND"; exit 0; fi
tightwad_backend_check "$BACKEND" || exit 3
OUT="$ROOT/$BACKEND"
mapfile -t FLAGS < <(tightwad_backend_flags "$BACKEND")

sdist() {
  mkdir -p "$ROOT"
  local tgz="$ROOT/llama_cpp_python-$VERSION.tar.gz"
  if [[ ! -f "$tgz" ]]; then
    echo "build_llama: downloading llama-cpp-python==$VERSION sdist" >&2
    "$PY" -m pip download --no-deps --no-binary :all: -d "$ROOT" "llama-cpp-python==$VERSION" >&2
  fi
  if [[ ! -d "$ROOT/src" ]]; then
    rm -rf "$ROOT/src.tmp" && mkdir -p "$ROOT/src.tmp"
    tar xzf "$tgz" -C "$ROOT/src.tmp" --strip-components=1
    "$PY" "$HERE/patch_llama.py" "$ROOT/src.tmp" >&2
    mv "$ROOT/src.tmp" "$ROOT/src"
  else
    "$PY" "$HERE/patch_llama.py" "$ROOT/src" >&2  # idempotent: a source from an older script
  fi
}

complete() {
  # libllama under its plain name too: a cache from a build that lost its libraries is redone
  [[ -x "$OUT/bin/llama-server" && -x "$OUT/bin/ggml-rpc-server" && -f "$OUT/build.env" ]] \
    && [[ -f "$OUT/bin/libllama.so" || -f "$OUT/bin/libllama.dylib" ]] \
    && compgen -G "$OUT/wheel/llama_cpp_python-$VERSION-*.whl" >/dev/null
}

build() {
  if complete; then return; fi
  sdist
  echo "build_llama: building llama.cpp $VERSION for backend '$BACKEND' + RPC (${FLAGS[*]:-no GPU flags}): libllama, llama-server, ggml-rpc-server, $JOBS jobs" >&2
  local start b="$ROOT/build-$BACKEND" tmp="$OUT.tmp"
  start="$(date +%s)"
  cmake -S "$ROOT/src/vendor/llama.cpp" -B "$b" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_RPATH='$ORIGIN' -DCMAKE_INSTALL_RPATH='$ORIGIN' \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON \
    "${FLAGS[@]}" >&2
  cmake --build "$b" --target llama llama-server ggml-rpc-server -j "$JOBS" >&2
  rm -rf "$tmp" && mkdir -p "$tmp/bin" "$tmp/wheel" "$tmp/pure"
  cp "$b/bin/llama-server" "$b/bin/ggml-rpc-server" "$tmp/bin/"
  # Unversioned sonames (above): each library is one file under the name that the binaries
  # and the binding load it by; a symlink is copied as the file it points to.
  find "$b" \( -name '*.so' -o -name '*.dylib' \) \( -type f -o -type l \) -exec cp -L {} "$tmp/bin/" \;
  if command -v ldd >/dev/null && ldd "$tmp/bin/llama-server" "$tmp/bin/ggml-rpc-server" | grep -q 'not found'; then
    ldd "$tmp/bin/llama-server" "$tmp/bin/ggml-rpc-server" >&2
    echo "build_llama: the binaries miss a library (above); nothing is cached" >&2
    exit 1
  fi
  echo "build_llama: packaging the binding (pure Python + the libraries just built)" >&2
  CMAKE_ARGS="-DLLAMA_BUILD=OFF" "$PY" -m pip wheel -q --no-deps -w "$tmp/pure" "$ROOT/src" >&2
  "$PY" "$HERE/patch_llama.py" --wheel "$(ls "$tmp"/pure/*.whl)" "$tmp/bin" "$tmp/wheel" >&2
  rm -rf "$tmp/pure"
  printf 'backend=%s\nversion=%s\nflags=%s\nbuild_seconds=%s\n' "$BACKEND" "$VERSION" \
    "${FLAGS[*]:-}" "$(($(date +%s) - start))" >"$tmp/build.env"
  rm -rf "$OUT" && mv "$tmp" "$OUT"
  rm -rf "$b"
}

build
case "$WHAT" in
  wheel) ls "$OUT"/wheel/*.whl ;;
  bin) echo "$OUT/bin" ;;
  all) echo "$OUT" ;;
esac
