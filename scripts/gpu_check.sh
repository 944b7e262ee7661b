#!/usr/bin/env bash
# The device check: one bounded run on a machine with a real GPU (CUDA, ROCm, Vulkan or Metal).
#
#   scripts/gpu_check.sh [--backend B] [--budget SECONDS] [--no-install] [--no-bench] [--dry-run]
#
# Steps, each under its own timeout and all under --budget (default 600 s; a step gets at most
# what is left, and a step that no longer fits is skipped and says so):
#   1. backend   TIGHTWAD_BACKEND / --backend, else detected (scripts/backend.sh); the toolkit
#                check stops here (exit 3) with what to install.
#   2. install   scripts/install.sh for that backend: one llama.cpp build (libllama,
#                llama-server, ggml-rpc-server only; CUDA for CMAKE_CUDA_ARCHITECTURES=native)
#                or the cached one, the binding and the package (--no-install: use .venv as is).
#   3. models    SmolLM2-135M, Qwen2.5-Coder-0.5B and 1.5B into the model cache.
#   4. devices   the devices ggml sees, and `tightwad-agent --check`.
#   5. gpu tier  pytest -m gpu tests/gpu on the first GPU ggml lists (TIGHTWAD_GPU_TEST_DEVICE).
#   6. bench     benchmarks on that GPU (--no-bench skips): `engine` (Generate vs llama-server,
#                Verify cost by batch width), `model-draft` (0.5B drafting for 1.5B vs
#                llama-server -md) and `draft-free` (n-gram / predicted outputs vs llama-server's
#                own n-gram speculation), small sizes.
# Results: $OUT_DIR (default benchmarks/results/gpu/): each step's log, the benchmarks' JSON and
# markdown, and summary.json + summary.md (backend, devices, each step's status and seconds).
# --dry-run prints this plan for this host (backend, flags, commands, timeouts) and builds,
# installs and writes nothing; its exit status is the toolkit check's (0, or 3 when missing).
# Exit: 0 when every step that ran passed, 1 otherwise, 2 on bad arguments, 3 missing toolkit.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/backend.sh
source scripts/backend.sh

BUDGET=600 DRY=0 INSTALL=1 BENCH=1
OUT_DIR="${TIGHTWAD_GPU_CHECK_OUT:-benchmarks/results/gpu}"
while (($#)); do
  case "$1" in
    --backend) export TIGHTWAD_BACKEND="${2:?--backend needs cuda, rocm, metal, vulkan or cpu}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-bench) BENCH=0 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2; }

ORIGIN=detected
[[ -n "${TIGHTWAD_BACKEND:-}" ]] && ORIGIN="chosen by TIGHTWAD_BACKEND/--backend"
BACKEND="$(tightwad_backend)" || exit 2
mapfile -t FLAGS < <(tightwad_backend_flags "$BACKEND")
VPY="$PWD/.venv/bin/python"
BENCH_ARGS=(--out "$OUT_DIR" --log-level warning)
# name|cap seconds|command (run with bash -c; $VPY and friends expanded now)
STEPS=()
((INSTALL)) && STEPS+=("install|420|TIGHTWAD_BACKEND=$BACKEND scripts/install.sh --no-models")
STEPS+=(
  "models|120|$VPY -m tightwad.fetch_models smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b"
  "devices|60|GGML_VK_VISIBLE_DEVICES=\${GGML_VK_VISIBLE_DEVICES:-0} $VPY -m tightwad.engine.ggml_devices && GGML_VK_VISIBLE_DEVICES=\${GGML_VK_VISIBLE_DEVICES:-0} .venv/bin/tightwad-agent --check"
  "gpu-tier|240|$VPY -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml=$OUT_DIR/gpu-tier.xml"
)
if ((BENCH)); then
  STEPS+=(
    "bench-engine|120|$VPY -m benchmarks.run ${BENCH_ARGS[*]} engine --threads 4 --ks 0,1,2,4,8,16 --reps 4 --gen-tokens 128 --gen-runs 2"
    "bench-model-draft|120|$VPY -m benchmarks.run ${BENCH_ARGS[*]} model-draft --threads 4 --per-kind 1 --max-tokens 128"
    "bench-draft-free|120|$VPY -m benchmarks.run ${BENCH_ARGS[*]} draft-free --threads 4 --per-kind 1 --max-tokens 128"
  )
fi

echo "gpu_check: backend $BACKEND ($ORIGIN), CMake flags: ${FLAGS[*]:-none} + -DGGML_RPC=ON"
echo "gpu_check: budget ${BUDGET}s, results in $OUT_DIR/"
CHECK_RC=0
tightwad_backend_check "$BACKEND" || CHECK_RC=$?
if ((DRY)); then
  echo "gpu_check: plan (dry run: nothing is built, installed or written)"
  i=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$step"
    i=$((i + 1))
    printf '  %d. %-18s timeout %4ss  %s\n' "$i" "$name" "$cap" "$cmd"
  done
  ((CHECK_RC)) && echo "gpu_check: the toolkit check failed: a real run would stop before step 1"
  exit "$CHECK_RC"
fi
((CHECK_RC)) && exit "$CHECK_RC"

mkdir -p "$OUT_DIR"
START=$(date +%s)
RESULTS=()  # name|status|seconds
FAILED=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$step"
  left=$((BUDGET - ($(date +%s) - START)))
  if ((left < 20)); then
    echo "gpu_check: $name skipped: ${left}s of the budget left"
    RESULTS+=("$name|skipped (budget)|0")
    continue
  fi
  limit=$((cap < left ? cap : left))
  echo "gpu_check: [$name] (timeout ${limit}s) $cmd"
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" bash -c "$cmd" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  dt=$(($(date +%s) - t0))
  case "$rc" in
    0) status=ok ;;
    124|137) status="timeout after ${limit}s"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  echo "gpu_check: [$name] $status in ${dt}s (log: $OUT_DIR/$name.log)"
  ((rc)) && tail -n 15 "$OUT_DIR/$name.log" | sed 's/^/    /'
  RESULTS+=("$name|$status|$dt")
  if [[ "$name" == install && "$rc" != 0 ]]; then
    echo "gpu_check: the install failed; nothing else can run" >&2
    break
  fi
done

TOTAL=$(($(date +%s) - START))
"${PY:-$VPY}" - "$OUT_DIR" "$BACKEND" "$TOTAL" "${RESULTS[@]}" <<'EOF' || FAILED=1
import json, platform, subprocess, sys
from pathlib import Path

out, backend, total, *rows = sys.argv[1:]
out = Path(out)
devices = [json.loads(x) for x in (out / "devices.log").read_text(errors="replace").splitlines()
           if x.startswith("{")] if (out / "devices.log").exists() else []
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
steps = [dict(zip(("step", "status", "seconds"), r.split("|"))) for r in rows]
junit = out / "gpu-tier.xml"
if junit.exists():  # "ok" with every test skipped would mean no GPU was seen
    import xml.etree.ElementTree as ET
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n, bad, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "skipped"))
    bad += int(suite.get("errors", 0))
    for s in steps:
        if s["step"] == "gpu-tier":
            s["status"] += f": {n - bad - skip} passed, {bad} failed, {skip} skipped"
summary = {"backend": backend, "host": platform.node(), "machine": platform.machine(),
           "commit": commit.stdout.strip(), "total_seconds": int(total),
           "devices": devices, "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
gpus = [f"{d['name']} {d['description']} ({d['memory_total_bytes'] / 2**30:.1f} GiB)"
        for d in devices if d.get("type") in ("gpu", "igpu")]
lines = [f"# GPU check: backend {backend}, commit {summary['commit']}", "",
         f"Host {summary['host']} ({summary['machine']}); GPUs: {', '.join(gpus) or 'none'}; "
         f"total {total} s.", "", "| step | status | seconds |", "|---|---|---|",
         *(f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps), "",
         "Benchmark tables: the `*.md` files under the scenario folders here."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit "$FAILED"
