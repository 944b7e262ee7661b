#!/usr/bin/env bash
# Installs Tightwad (scripts/install.sh) and runs the main job: `tightwad up`, the whole stack on
# this host with the embedded default (SmolLM2-135M, n-gram drafting). Extra arguments go to
# `tightwad up` (see `tightwad up --help`). The dashboard is the gateway's address in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# ggml skips a Vulkan device of type CPU (Mesa's llvmpipe) unless GGML_VK_VISIBLE_DEVICES names
# it. Asked for Vulkan (TIGHTWAD_BACKEND=vulkan) on a host where ggml sees no Vulkan device by
# default but does with that variable, make the device visible, and say so; a real Vulkan GPU
# is seen without it, and a GGML_VK_VISIBLE_DEVICES of the user's own is left as it is.
vulkan_seen() { .venv/bin/python -m tightwad.engine.ggml_devices 2>/dev/null | grep -q '"name": "Vulkan'; }
if [[ "${TIGHTWAD_BACKEND:-}" == vulkan && -z "${GGML_VK_VISIBLE_DEVICES+set}" ]] && ! vulkan_seen; then
  if GGML_VK_VISIBLE_DEVICES=0 vulkan_seen; then
    export GGML_VK_VISIBLE_DEVICES=0
    echo "up: TIGHTWAD_BACKEND=vulkan: the only Vulkan device is of type CPU (e.g. Mesa's" \
      "llvmpipe), which ggml skips by default; using it with GGML_VK_VISIBLE_DEVICES=0" \
      "(set GGML_VK_VISIBLE_DEVICES yourself to choose another)" >&2
  else
    echo "up: TIGHTWAD_BACKEND=vulkan but ggml sees no Vulkan device: the engine runs on the CPU" >&2
  fi
fi
echo "Starting tightwad up: once it serves it prints the API URL, a curl to try and the" \
  "dashboard's URL (http://127.0.0.1:8088/ by default; it asks for the API key if one is set)."
exec .venv/bin/tightwad up "$@"
