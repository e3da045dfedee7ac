#!/usr/bin/env bash
# The prepared GPU check, for a machine lent with a GPU (run from anywhere; it works in the repository root):
#
#   bash benchmarks/gpu_check.sh
#
# 1. prints the GPU (nvidia-smi) and what torch sees;
# 2. makes the environment only if `gendistill, torch, ...` do not import: a venv (system site packages kept,
#    so a CUDA torch already there is used) and `pip install -c constraints.txt -e ".[dev]"`; what it could not
#    do is printed and the check goes on;
# 3. runs the GPU tests: python -m pytest -v -m gpu -x --timeout 300 tests/ (tests that need gsplat's CUDA
#    kernels skip when they are not built; GPU_CHECK_BUILD_GSPLAT=1 builds them first, which takes minutes);
# 4. runs benchmarks/cuda_timings.py (benchmarks/results/cuda_timings.{json,md}).
#
# Everything printed also goes to $OUT/gpu_check.log when $OUT is set (the device tool brings $OUT back), with
# the timing results and the tests' JUnit XML beside it. Each part runs under `timeout`; the whole check stays
# under GPU_CHECK_SECONDS (default 470 s; raise it with GPU_CHECK_BUILD_GSPLAT=1). Exit status 0 only when
# every part passed (a machine where torch sees no CUDA fails the probe).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEADLINE="${GPU_CHECK_SECONDS:-470}"
VENV="${GPU_CHECK_VENV:-/tmp/gendistill-gpu-venv}"
PY=python3
FAILED=()

say() { printf '\n=== %s (at %ss)\n' "$*" "$SECONDS"; }

# seconds a part may take: its cap, less what the later parts reserve; 0 when too little is left
limit() {
  local cap=$1 reserve=$2 left=$(( DEADLINE - SECONDS - $2 ))
  (( left < cap )) && cap=$left
  (( cap < 20 )) && cap=0
  echo "$cap"
}

# run a named part under timeout; records failures (124: ran out of time)
part() {
  local name=$1 seconds=$2; shift 2
  if (( seconds == 0 )); then
    echo "SKIPPED $name: no time left"; FAILED+=("$name (no time left)"); return
  fi
  local command="${*//$'\n'/ }"
  say "$name (limit ${seconds}s): ${command:0:160}"
  timeout -k 10 "$seconds" "$@"
  local rc=$?
  (( rc == 124 || rc == 137 )) && echo "TIMED OUT: $name after ${seconds}s"
  (( rc != 0 )) && FAILED+=("$name (exit $rc)")
  echo "--- $name: exit $rc"
}

deps_import() { "$PY" -c 'import gendistill, torch, diffusers, transformers, accelerate, gsplat, pytest' 2>/dev/null; }

setup_env() {
  say "environment"
  if deps_import; then echo "python3 has gendistill and its dependencies: no install"; return; fi
  echo "python3 cannot import gendistill and its dependencies; making a venv at $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    timeout 60 python3 -m venv --system-site-packages "$VENV" || echo "COULD NOT create the venv at $VENV"
  fi
  [ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"
  local seconds; seconds=$(limit 150 280)
  if (( seconds > 0 )) && timeout "$seconds" "$PY" -m pip install -q -c constraints.txt -e ".[dev]"; then
    echo "installed gendistill[dev] with constraints.txt into $PY"
  else
    echo "COULD NOT pip install -c constraints.txt -e .[dev] (no registry reachable from this machine, or no" \
         "time left); the tests and the benchmark run with what $PY has"
  fi
  deps_import || echo "STILL MISSING: $PY cannot import gendistill, torch, diffusers, transformers, accelerate, gsplat, pytest"
}

read -r -d '' PROBE <<'PYTHON'
try:
    import importlib.util, shutil
    import gsplat
    prebuilt = importlib.util.find_spec("gsplat.csrc") is not None
    nvcc = shutil.which("nvcc")
    print(f"gsplat {gsplat.__version__}, prebuilt CUDA kernels: {prebuilt}, nvcc: {nvcc}")
except Exception as err:
    print(f"gsplat not importable: {type(err).__name__}: {err}")
import torch
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device 0: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
else:
    print("NO CUDA: torch sees no CUDA device, so every gpu test will be SKIPPED and nothing will be timed")
    raise SystemExit(3)
PYTHON

read -r -d '' GSPLAT_BUILD <<'PYTHON'
import time
start = time.time()
import gsplat.cuda._backend as backend
assert backend._C is not None, "gsplat CUDA kernels did not load"
print(f"gsplat CUDA kernels loaded in {time.time() - start:.0f} s")
PYTHON

main() {
  cd "$REPO" || exit 2
  say "GPU check of $(git rev-parse --short HEAD 2>/dev/null || echo 'an unversioned copy') on $(hostname)"
  timeout 20 nvidia-smi || echo "COULD NOT run nvidia-smi"
  setup_env
  part "torch probe" "$(limit 45 260)" "$PY" -c "$PROBE"

  local timeout_flag=(--timeout 300) junit=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null || { timeout_flag=(); echo "pytest-timeout missing: no per-test timeout"; }
  [ -n "${OUT:-}" ] && junit=(--junitxml "$OUT/gpu_tests.xml")
  if [ "${GPU_CHECK_BUILD_GSPLAT:-0}" = 1 ]; then
    part "gsplat CUDA build" "$(limit 240 300)" "$PY" -c "$GSPLAT_BUILD"
  fi
  # -v, not -q: when the part runs out of time, the log still names every test that ran
  part "gpu tests" "$(limit 250 140)" "$PY" -m pytest -v -rsxX --durations=10 -p no:cacheprovider -m gpu -x \
    ${timeout_flag[@]+"${timeout_flag[@]}"} ${junit[@]+"${junit[@]}"} tests/

  local seconds; seconds=$(limit 140 0)
  part "cuda timings" "$seconds" "$PY" benchmarks/cuda_timings.py --budget $(( seconds > 60 ? seconds - 50 : 10 ))
  if [ -n "${OUT:-}" ]; then cp benchmarks/results/cuda_timings.json benchmarks/results/cuda_timings.md "$OUT"/ 2>/dev/null; fi

  say "summary"
  if (( ${#FAILED[@]} == 0 )); then echo "every part passed"; return 0; fi
  printf 'FAILED: %s\n' "${FAILED[@]}"
  return 1
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
  main "$@" 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
main "$@"
