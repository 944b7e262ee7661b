#!/usr/bin/env bash
# Installs Tightwad (scripts/install.sh) and runs the main job: `tightwad up`, the whole stack on
# this host with the embedded default (SmolLM2-135M, n-gram drafting). Extra arguments go to
# `tightwad up` (see `tightwad up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/tightwad up "$@"
