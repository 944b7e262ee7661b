#!/usr/bin/env bash
# Installs everything the tests need, then runs every check and every test tier:
# buf lint (+ buf breaking against the previous commit), ruff, mypy, pytest (pure, engine,
# cluster and slow tiers alike). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
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
(cd protos && npx --yes @bufbuild/buf lint)
if [[ -n "${TIGHTWAD_BUF_AGAINST:-}" ]] || git cat-file -e HEAD~1:protos/buf.yaml 2>/dev/null; then
  echo "== buf breaking" >&2
  (cd protos && npx --yes @bufbuild/buf breaking --against "${TIGHTWAD_BUF_AGAINST:-../.git#ref=HEAD~1,subdir=protos}")
fi
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy tightwad/spec tightwad/controller
echo "== pytest" >&2
exec .venv/bin/pytest "$@"
