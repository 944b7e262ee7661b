#!/usr/bin/env bash
# Builds ggml-rpc-server and llama-server (with RPC) for this host's backend: a thin wrapper over
# scripts/build_llama.sh, which builds the binding and the binaries once per backend into
# $TIGHTWAD_CACHE/llama.cpp/<version>/<backend>/bin, where tightwad-agent looks by itself.
#
#   scripts/build_worker.sh [cuda|rocm|metal|vulkan|cpu] [--jobs N]
#
# No backend argument: TIGHTWAD_BACKEND, else detected (scripts/backend.sh). Prints the bin dir.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ $# -gt 0 && "$1" != --jobs ]]; then export TIGHTWAD_BACKEND="$1"; shift; fi
if [[ "${1:-}" == --jobs ]]; then export TIGHTWAD_BUILD_JOBS="${2:?--jobs needs a number}"; fi
exec "$HERE/build_llama.sh" bin
