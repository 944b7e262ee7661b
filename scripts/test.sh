#!/usr/bin/env bash
# Installs everything the tests need, then runs every check and every test tier:
# buf lint (+ buf breaking against the previous commit), ruff, mypy, pytest (pure, engine,
# cluster and slow tiers alike). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages the tiers need, where we can install them (CI runs as root on Debian): a real
# ggml GPU backend for the gpu tier (Vulkan on Mesa's lavapipe: loader, headers, glslc), and
# Chromium for the dashboard's browser tests. Installed before install.sh so that the backend
# detection sees the Vulkan toolkit and builds llama.cpp for it.
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  need=()
  for pkg in mesa-vulkan-drivers libvulkan-dev glslc spirv-headers chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if ((${#need[@]})); then
    echo "test: apt-get install ${need[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) || \
      echo "test: could not install ${need[*]}; the gpu and dashboard tiers will say why they skip" >&2
  fi
fi
scripts/install.sh
VPY="$PWD/.venv/bin/python"
# systemd-analyze verifies the packaged units; install it where we can (CI runs as root).
if ! command -v systemd-analyze >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) || \
    echo "test: could not install systemd; the unit checks will be skipped" >&2
fi
"$VPY" -m tightwad.fetch_models >/dev/null
scripts/build_llama.sh bin >/dev/null
echo "== buf lint" >&2
npx --yes @bufbuild/buf lint  # the workspace config is buf.yaml at the repository root
# Breaking changes against the previous commit, whichever layout it had (the buf config moved
# from protos/ to the root; both name the same files, tightwad/v1/*.proto).
against="${TIGHTWAD_BUF_AGAINST:-}"
if [[ -z "$against" ]]; then
  if git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
    against=".git#ref=HEAD~1"
  elif git cat-file -e HEAD~1:protos/buf.yaml 2>/dev/null; then
    against=".git#ref=HEAD~1,subdir=protos"
  fi
fi
if [[ -n "$against" ]]; then
  echo "== buf breaking" >&2
  npx --yes @bufbuild/buf breaking --against "$against"
fi
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if grep -q '^\[tool.importlinter\]' pyproject.toml; then
  echo "== import contracts" >&2
  .venv/bin/lint-imports
fi
echo "== mypy" >&2
.venv/bin/mypy tightwad/spec tightwad/controller
echo "== pytest" >&2
exec .venv/bin/pytest "$@"
