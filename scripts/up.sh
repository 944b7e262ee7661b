#!/usr/bin/env bash
# Installs Tightwad (scripts/install.sh) and runs the main job: `tightwad up`, the whole stack on
# this host with the embedded default (SmolLM2-135M, n-gram drafting). Extra arguments go to
# `tightwad up` (see `tightwad up --help`). The dashboard is the gateway's address in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# shellcheck source=scripts/backend.sh
source scripts/backend.sh
tightwad_vulkan_visible .venv/bin/python  # Mesa's llvmpipe when Vulkan is asked for (see there)
echo "Starting tightwad up: once it serves it prints the API URL, a curl to try and the" \
  "dashboard's URL (http://127.0.0.1:8088/ by default; it asks for the API key if one is set)."
exec .venv/bin/tightwad up "$@"
