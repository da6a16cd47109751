#!/usr/bin/env bash
# Regenerates every CPU benchmark file of docs/bench on this machine, with the
# exact commands, and prints how long each step and the whole run took.
#
#     bash bench/run_cpu_suite.sh [OUT_DIR [STEP ...]]     # default: docs/bench, all steps
#
# STEP is any of: headline nocache full sweepN sweepC floor (default: all, in that order).
# Run it on a quiet machine (nothing else using the CPU): every timing is a
# median, but on a 2-core VM another busy process moves medians by 10x.
#
# Wall time of each step on the 2-core development VM (Xeon AVX-512, 24 GiB),
# quiet: see docs/bench/suite_log.txt, which this script writes (summed up in
# docs/bench/README.md).  To fit ~30 min the grid
# (`full`) uses fewer repetitions than the headline run (>= 10 samples or
# 0.2 s per measurement, at most 1.5 s once 3 samples are in), leaves out
# momkernels' `torch` reference backend (an oracle, not a contender: it is in
# the headline run and the sweeps), runs focal/dice only on 8192 x {9, 17, 37}
# and 4096 x 32000, and caps the LM shapes at 16384 x 32000 and
# 2048 x 128256 (eager holds ~5 logits-sized buffers: these fit 24 GiB).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
OUT="${1:-docs/bench}"
shift || true
STEPS="${*:-headline nocache full sweepN sweepC floor}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
mkdir -p "$OUT"
LOG="$OUT/suite_log.txt"
FAST=(--reps 10 --warmup 2 --min-seconds 0.2 --max-seconds 1.5)
T0=$(date +%s)
# the log accumulates: each run appends its header and steps
echo "# bench/run_cpu_suite.sh $OUT $STEPS  ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$LOG"

step() {  # step NAME COMMAND...
  local name="$1" s rc
  shift
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name: $*" | tee -a "$LOG"
  s=$(date +%s)
  "$@"
  rc=$?
  echo "=== $name: rc=$rc, $(( $(date +%s) - s )) s" | tee -a "$LOG"
}

# 1. headline (README): 8192x9 and 4096x32000, fp32, ce, lam 0.175, >= 30 samples
step headline "$PY" -m momkernels bench --out "$OUT" --tag cpu_fp32
# 2. the same 4096x32000 fwd+bwd without the C++ gradient-buffer recycling
step nocache env MOMKERNELS_GRAD_CACHE=0 "$PY" -m momkernels bench --shapes 4096x32000 \
  --no-compile --backends cpp --modes fwd+bwd --out "$OUT" --tag cpu_fp32_no_grad_cache
# 3. the grid: NER/MRC/LM shapes x fp32, bf16 x ce (lam 1, 0.175), focal, dice; peak memory
step full "$PY" -m momkernels bench --full --backends cpp "${FAST[@]}" --out "$OUT" --tag cpu_full
# 4. time vs N at C = 9 (N = 512 ... 65536) and vs C at N = 4096 (C = 2 ... 128256)
step sweepN "$PY" -m momkernels bench --sweep N "${FAST[@]}" --out "$OUT" --tag cpu_fp32
step sweepC "$PY" -m momkernels bench --sweep C "${FAST[@]}" --out "$OUT" --tag cpu_fp32
# 5. where the time goes (kernels vs fixed costs, the memory floor)
step floor sh -c "\"$PY\" bench/cpu_floor.py > \"$OUT/cpu_analysis.md\""

echo "total: $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
