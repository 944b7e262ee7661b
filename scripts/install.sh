#!/usr/bin/env bash
# Installs Tightwad into ./.venv on a fresh machine: builds (or reuses from the cache) the
# llama-cpp-python wheel with GGML_RPC=ON, installs the package with its dev extras, and fetches
# the real test models. Idempotent and fast when everything is cached.
#
# Usage: scripts/install.sh [--no-models]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
VPY="$PWD/.venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The binding must be built from source with RPC on; build_llama.sh caches the wheel by version.
WHEEL_DIR="$(PYTHON="$VPY" scripts/build_llama.sh wheel | xargs dirname)"
"$VPY" -m pip install -q --no-deps "$WHEEL_DIR"/llama_cpp_python-*.whl
"$VPY" -m pip install -q diskcache typing-extensions
"$VPY" -m pip install -q -e '.[dev]'
if [[ "${1:-}" != "--no-models" ]]; then
  "$VPY" -m tightwad.fetch_models smollm2-135m >/dev/null
fi
echo "install: ok ($("$VPY" -c 'import tightwad; print(tightwad.__version__)'))" >&2
