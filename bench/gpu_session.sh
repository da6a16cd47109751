#!/usr/bin/env bash
# One-shot GPU validation of momkernels, sized for the GPU machine: one H200
# (sm_90), 16 cores, no network, `python3` with torch, triton, pytest and nvcc;
# commands of at most 10 minutes, at most 8 files of <= 16 MiB brought back
# from the output folder, only the last 12,000 characters of output shown.
# Run from a momkernels checkout:
#
#     bash bench/gpu_session.sh [--dry-run] [OUT_DIR]     # OUT_DIR: default $OUT, else ./gpu_out
#
# --dry-run prints the steps, each step's time budget and the output files,
# and runs nothing.  Without a usable GPU the script stops at once (exit 2).
#
# Steps, each under its own `timeout` (capped by what is left of the whole
# budget, SESSION_BUDGET s < 6 min); a failed step does not stop the others:
#   build        FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 pip install --no-index
#                --no-build-isolation --no-deps . (~1.5 min on 16 cores)
#   check        python -m momkernels info; python -m momkernels check --device cuda
#                for cpp and torch (the Triton backend's ~hundreds of kernel
#                compilations, 0.3-0.45 s each, are left to tests_triton's time box)
#   tests_cuda   python_tests/test_cuda.py (GPU-only properties) first, then the
#                cuda cases of the device-parametrised grids; backends cpp / torch /
#                auto (pytest -v, JUnit report)
#   tests_triton a curated, prioritised Triton subset (test_cuda.py's and the
#                grids' cuda triton cases, test_triton.py, test_triton_parity.py),
#                pytest -v, JUnit report
#   bench        bench/gpu_bench.py (a thin command line over momkernels/benchmark.py,
#                the one harness): fwd / bwd / fwd+bwd, bandwidth against a device copy
# The tests skip what would start after their step's deadline
# (MOMKERNELS_TEST_DEADLINE, python_tests/conftest.py), so a step that runs out
# of time still writes its report; the skips are counted in the summary.
#
# Output (7 files, no sub-folders): env.txt, session.log (every step's full
# log), tests_cuda.xml, tests_triton.xml, gpu_bench.csv, gpu_bench.md,
# summary.txt (the verdicts, also printed last).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT_ARG="${1:-${OUT:-./gpu_out}}"
PY="${PYTHON:-python3}"
SESSION_BUDGET=${MOMK_SESSION_BUDGET:-345}  # seconds for the whole script

# name, time budget (s), what it runs
STEPS=(
  "build:120:pip install --no-index --no-build-isolation --no-deps (FORCE_CUDA=1, sm_90)"
  "check:40:python -m momkernels info; python -m momkernels check --device cuda (cpp, torch)"
  "tests_cuda:60:pytest -v test_cuda.py + the grids' cuda cases (cpp, torch, auto) -> tests_cuda.xml"
  "tests_triton:65:pytest -v curated Triton subset -> tests_triton.xml"
  "bench:50:bench/gpu_bench.py --time-budget 35 -> gpu_bench.csv, gpu_bench.md"
)
OUT_FILES=(env.txt session.log tests_cuda.xml tests_triton.xml gpu_bench.csv gpu_bench.md
           summary.txt)

budget_of() {
  local s
  for s in "${STEPS[@]}"; do
    [ "${s%%:*}" = "$1" ] && { s="${s#*:}"; echo "${s%%:*}"; return; }
  done
}

# CUDA, backends cpp / torch / auto: what only a GPU run shows first (test_cuda.py),
# then the grids written once for every device, whose cuda cases -k "cuda" selects
# (conftest.py's `device` fixture)
CUDA_TESTS=(
  test_device_grids.py::test_small_c_group_sizes test_device_grids.py::test_neg_inf_masked_logits
  test_device_grids.py::test_options_low_precision
  test_cuda.py::test_cuda_graph_replay test_cuda.py::test_compile_fullgraph
  test_cuda.py::test_out_of_range_target_gives_nan
  test_cuda.py::test_out_of_range_target_gradient_is_nan_row_cpp test_cuda.py::test_int64_offsets
  test_cuda.py::test_no_host_sync test_cuda.py::test_launch_counts_ner_shape
  test_cuda.py::test_deterministic_cpp test_cuda.py::test_opcheck_fwd test_cuda.py::test_opcheck_bwd
  test_cuda.py::test_build_info_reports_cuda test_cuda.py::test_check_targets_raises
  test_edge_cases.py::test_bf16_confident_majority_rows test_device_grids.py::test_huge_vocabulary
  test_edge_cases.py::test_ignored_rows_exactly_zero test_edge_cases.py::test_all_ignored_batch
  test_edge_cases.py::test_empty_batch test_cross_entropy_parity.py::test_equals_f_cross_entropy
  test_device_grids.py::test_nd_input_and_upstream test_device_grids.py::test_layouts
  test_device_grids.py::test_dtypes_classes_reductions test_device_grids.py::test_lam_extremes
  test_device_grids.py::test_options test_mom_loss.py::test_options_grid
  test_mom_loss.py::test_shapes_pairwise
)
# Triton, in priority order (each new kernel configuration is a 0.3-0.45 s compile);
# -k "triton and not cpu" leaves out the grids' cpu cases
TRITON_TESTS=(
  test_cuda.py::test_int64_offsets test_triton.py::test_out_of_range_target_gives_nan
  test_cuda.py::test_out_of_range_target_gives_nan test_device_grids.py::test_neg_inf_masked_logits
  test_cuda.py::test_cuda_graph_replay test_triton.py::test_compile_sees_triton_kernels
  test_cuda.py::test_compile_fullgraph test_triton.py::test_no_host_sync
  test_triton.py::test_regime_boundaries test_device_grids.py::test_options_low_precision
  test_device_grids.py::test_small_c_group_sizes test_triton.py::test_options_row_regime
  test_triton_parity.py test_triton.py::test_inplace_backward_same_gradient
  test_triton.py::test_bf16_confident_majority_rows test_triton.py::test_dtypes
  test_triton.py::test_layouts_and_targets test_triton.py::test_deterministic
  test_triton.py::test_opcheck_fwd test_triton.py::test_opcheck_bwd
  test_device_grids.py::test_huge_vocabulary
)

if [ "$DRY" = 1 ]; then
  total=0
  echo "gpu_session.sh --dry-run: nothing is run.  python: $PY; output folder: $OUT_ARG"
  echo "steps (time budget each; the whole script is capped at ${SESSION_BUDGET}s):"
  for s in "${STEPS[@]}"; do
    name=${s%%:*}; rest=${s#*:}; b=${rest%%:*}; what=${rest#*:}
    total=$((total + b))
    printf '  %-13s %4ss  %s\n' "$name" "$b" "$what"
  done
  echo "  sum of the step budgets: ${total}s"
  echo "tests_cuda runs (python_tests/, -k 'cuda and not triton'): ${CUDA_TESTS[*]}"
  echo "tests_triton runs (python_tests/, -k 'triton and not cpu'): ${TRITON_TESTS[*]}"
  echo "output files (${#OUT_FILES[@]}, in $OUT_ARG): ${OUT_FILES[*]}"
  exit 0
fi

T0=$(date +%s)
fail_fast() {
  echo "gpu_session.sh: $*" >&2
  echo "gpu_session.sh: stopped after $(( $(date +%s) - T0 ))s; nothing was built or run" >&2
  exit 2
}
command -v "$PY" > /dev/null 2>&1 || fail_fast "no '$PY' on PATH (set PYTHON=...)"
GPU_CHECK='import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False (torch %s, CUDA %s)" % (torch.__version__, torch.version.cuda)
p = torch.cuda.get_device_properties(0)
print("%s, sm_%d%d, %.0f GiB" % (p.name, p.major, p.minor, p.total_memory / 2**30))'
GPU_NAME=$(timeout 60 "$PY" -c "$GPU_CHECK" 2>&1) \
  || fail_fast "no usable CUDA GPU: ${GPU_NAME##*$'\n'}
  This script validates the CUDA and Triton paths on a GPU machine; on a CPU-only machine
  run the CPU suite instead (pytest python_tests -q -m 'not slow')."

mkdir -p "$OUT_ARG" || fail_fast "cannot create $OUT_ARG"
OUT_DIR="$(cd "$OUT_ARG" && pwd)"
LOG="$OUT_DIR/session.log"
SUMMARY="$OUT_DIR/summary.txt"
: > "$LOG"
: > "$SUMMARY"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${MOMK_ARCH:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
unset MOMKERNELS_CHECK TRITON_INTERPRET MOMKERNELS_TEST_BACKENDS

{
  echo "date: $(date -u)"
  echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  echo "gpu: $GPU_NAME"
  echo "python: $PY ($("$PY" --version 2>&1)); CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  timeout 60 "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1
  timeout 20 "$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -n 2
} > "$OUT_DIR/env.txt" 2>&1
head -n 4 "$OUT_DIR/env.txt"

# Run everything from an empty scratch folder: `import momkernels` then finds
# the installed package (not the checkout's sources), and nothing but the
# files above lands in OUT_DIR.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 1

# step NAME COMMAND...: runs COMMAND under `timeout` (the step's budget, capped
# by what is left of SESSION_BUDGET), appends its output to session.log, shows
# its last lines and records the verdict in summary.txt.
step() {
  local name="$1" max left limit rc start dur verdict
  shift
  max=$(budget_of "$name")
  left=$((SESSION_BUDGET - ($(date +%s) - T0)))
  if [ "$left" -lt 10 ]; then
    echo "SKIPPED  $name (session budget spent)" >> "$SUMMARY"
    return 0
  fi
  limit=$max
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name (timeout ${limit}s) ==="
  echo "=== $name (timeout ${limit}s): $*" >> "$LOG"
  start=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/step.log" 2>&1
  rc=$?
  dur=$(( $(date +%s) - start ))
  cat "$WORK/step.log" >> "$LOG"
  tail -n 6 "$WORK/step.log" | cut -c1-300
  if [ $rc -eq 0 ]; then verdict="OK      "
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMEOUT "
  else verdict="FAILED  "; fi
  local counts
  counts=$(grep -E '^=+ .*(passed|failed|error|skipped).* in [0-9.]+s' "$WORK/step.log" | tail -n 1 | tr -d '=')
  echo "$verdict $name rc=$rc ${dur}s/${limit}s${counts:+ --$counts}" >> "$SUMMARY"
  return 0
}

# seconds of tests before the report: the step's budget less pytest's start-up
# and one long test (a torch.compile case on a cold cache)
deadline() { echo $(( $(budget_of "$1") - 20 )); }

step build "$PY" -m pip install --no-index --no-build-isolation --no-deps -v "$REPO"
step check bash -c "'$PY' -m momkernels info && '$PY' -m momkernels check --device cuda --backend cpp --backend torch"

cuda_ids=()
for f in "${CUDA_TESTS[@]}"; do cuda_ids+=("$REPO/python_tests/$f"); done
MOMKERNELS_TEST_DEADLINE=$(deadline tests_cuda) step tests_cuda \
  "$PY" -m pytest -v -rfE -p no:cacheprovider --rootdir "$REPO" -k "cuda and not triton" \
  --junitxml="$OUT_DIR/tests_cuda.xml" "${cuda_ids[@]}"

triton_ids=()
for f in "${TRITON_TESTS[@]}"; do triton_ids+=("$REPO/python_tests/$f"); done
MOMKERNELS_TEST_DEADLINE=$(deadline tests_triton) step tests_triton \
  "$PY" -m pytest -v -rfE -p no:cacheprovider --rootdir "$REPO" -k "triton and not cpu" \
  --junitxml="$OUT_DIR/tests_triton.xml" "${triton_ids[@]}"

step bench "$PY" "$REPO/bench/gpu_bench.py" --out "$OUT_DIR" --time-budget 35

echo
if [ -f "$OUT_DIR/gpu_bench.md" ]; then
  echo "=== benchmark, fwd+bwd rows (all rows: gpu_bench.md) ==="
  grep -E '^\| (dtype|---)|fwd\+bwd' "$OUT_DIR/gpu_bench.md" | cut -c1-160
fi
echo
echo "=== failed tests (full logs: session.log) ==="
grep -E '^(FAILED|ERROR) ' "$LOG" | cut -c1-200 | head -n 40 | grep . || echo "(none)"
echo "total: $(( $(date +%s) - T0 ))s of ${SESSION_BUDGET}s; output: $OUT_DIR ($(ls "$OUT_DIR" | wc -l) files)" >> "$SUMMARY"
echo
echo "=== summary ==="
cat "$SUMMARY"
