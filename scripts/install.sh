#!/usr/bin/env bash
# Installs Tightwad into ./.venv on a fresh machine: ONE llama.cpp build for this host's ggml
# backend (scripts/build_llama.sh: the binding wheel, llama-server and ggml-rpc-server from the
# same shared libraries, cached under ~/.cache/tightwad/llama.cpp/<version>/<backend>/), the
# package with its dev extras, and the real test models. Idempotent and fast when cached.
#
# The backend is TIGHTWAD_BACKEND=cuda|rocm|metal|vulkan|cpu, or detected (scripts/backend.sh);
# it is printed before anything is built. A missing toolkit stops here (exit 3) with what to
# install or which backend to choose instead.
#
# Usage: [TIGHTWAD_BACKEND=...] scripts/install.sh [--no-models]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# shellcheck source=scripts/backend.sh
source scripts/backend.sh
BACKEND="$(tightwad_backend)"
export TIGHTWAD_BACKEND="$BACKEND"  # build_llama.sh builds for exactly this one
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHED="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}/llama.cpp/$VERSION/$BACKEND"
if [[ -f "$CACHED/build.env" ]]; then
  echo "install: llama.cpp backend '$BACKEND' (cached build in $CACHED)" >&2
else
  echo "install: llama.cpp backend '$BACKEND': building libllama, llama-server and ggml-rpc-server once (the longest step; its time is recorded in $CACHED/build.env)" >&2
fi
tightwad_backend_check "$BACKEND" || exit 3
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
VPY="$PWD/.venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# build_llama.sh's one build; its wheel is the binding's Python code plus the libraries of that
# build (no second compile). --force-reinstall: the same version built for another backend
# must replace the installed one.
WHEEL="$(PYTHON="$VPY" scripts/build_llama.sh wheel)"
"$VPY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
"$VPY" -m pip install -q diskcache typing-extensions
"$VPY" -m pip install -q -e '.[dev]'
if [[ "${1:-}" != "--no-models" ]]; then
  "$VPY" -m tightwad.fetch_models smollm2-135m >/dev/null
fi
echo "install: ok ($("$VPY" -c 'import tightwad; print(tightwad.__version__)'), llama.cpp backend $BACKEND)" >&2
