#!/usr/bin/env bash
# One-shot GPU validation of momkernels, for a machine with a GPU, torch,
# triton, nvcc (and optionally transformers / liger-kernel) installed and no
# network.  Run from a momkernels checkout:
#
#     bash bench/gpu_session.sh [OUT_DIR]        # default: $OUT, else ./gpu_out
#
# Steps (each under its own `timeout`; a failed step does not stop the rest;
# the whole script stays under ~8 minutes):
#   1. build + install:  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 (override with
#      MOMK_ARCH) pip install --no-build-isolation --no-deps .
#   2. python -m momkernels info
#   3. CUDA tests (python_tests/test_cuda.py), cpp and torch backends
#   4. Triton on CUDA (test_cuda.py's triton cases, test_triton.py if present)
#   5. benchmark (bench/gpu_bench.py): CSV + markdown table
# Everything (logs, nvidia-smi, CSV, table, summary) goes to OUT_DIR.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-./gpu_out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
T0=$(date +%s)
BUDGET=${MOMK_SESSION_BUDGET:-450}   # seconds for the whole script
: > "$SUMMARY"

PY="${PYTHON:-python}"
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME="$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' 2>/dev/null)"
  [ -z "$CUDA_HOME" ] && [ -d /usr/local/cuda ] && CUDA_HOME=/usr/local/cuda
fi
export CUDA_HOME
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${MOMK_ARCH:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
unset MOMKERNELS_CHECK TRITON_INTERPRET

# step NAME MAX_SECONDS COMMAND...: runs COMMAND with a timeout (capped by what
# is left of the budget), logs to OUT_DIR/NAME.log, records the result.
step() {
  local name="$1" max="$2"
  shift 2
  local now left limit rc start
  now=$(date +%s)
  left=$((BUDGET - (now - T0)))
  if [ "$left" -lt 15 ]; then
    echo "SKIPPED  $name (time budget spent)" | tee -a "$SUMMARY"
    return 0
  fi
  limit=$max
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name (timeout ${limit}s) ===" 
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  local dur=$(( $(date +%s) - start ))
  tail -n 15 "$OUT_DIR/$name.log"
  if [ $rc -eq 0 ]; then
    echo "OK       $name (${dur}s)" | tee -a "$SUMMARY"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "TIMEOUT  $name after ${dur}s (see $name.log)" | tee -a "$SUMMARY"
  else
    echo "FAILED   $name rc=$rc (${dur}s, see $name.log)" | tee -a "$SUMMARY"
  fi
  return 0
}

{
  echo "date: $(date -u)"
  echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  nvidia-smi 2>&1 || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")' 2>&1
  "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
  "$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -n 2
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

# Everything below runs from OUT_DIR, so that `import momkernels` finds the
# installed package, not the checkout's (which has no compiled extension).
cd "$OUT_DIR" || exit 1

step build 200 "$PY" -m pip install --no-build-isolation --no-deps -v "$REPO"
step info 40 "$PY" -m momkernels info

TESTS=("$REPO/python_tests/test_cuda.py")
step tests_cuda 110 "$PY" -m pytest -q -rfEs -p no:cacheprovider --rootdir "$REPO" \
  -k "not triton" "${TESTS[@]}" --junitxml="$OUT_DIR/tests_cuda.xml"

TRITON_TESTS=("$REPO/python_tests/test_cuda.py")
[ -f "$REPO/python_tests/test_triton.py" ] && TRITON_TESTS+=("$REPO/python_tests/test_triton.py")
step tests_triton 80 "$PY" -m pytest -q -rfEs -p no:cacheprovider --rootdir "$REPO" \
  -k "triton" "${TRITON_TESTS[@]}" --junitxml="$OUT_DIR/tests_triton.xml"

step bench 150 "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT_DIR" --time-budget 120

echo
echo "=== summary ($(( $(date +%s) - T0 ))s, output in $OUT_DIR) ==="
cat "$SUMMARY"
for f in tests_cuda tests_triton; do
  [ -f "$OUT_DIR/$f.log" ] && echo "$f: $(grep -E '(passed|failed|error)' "$OUT_DIR/$f.log" | tail -n 1)"
done
[ -f "$OUT_DIR/gpu_bench.md" ] && cat "$OUT_DIR/gpu_bench.md"
echo "total: $(( $(date +%s) - T0 ))s" >> "$SUMMARY"
