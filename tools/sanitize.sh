#!/usr/bin/env bash
# Build momkernels' CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer
# and run the checks and tests under them; any sanitizer report fails the run.
#
#   bash tools/sanitize.sh            # full: C++ unit test, `python -m momkernels check`,
#                                     #       `pytest python_tests -m "not slow"`
#   bash tools/sanitize.sh --smoke    # CI: C++ unit test, the cpp check, a kernel-heavy
#                                     #     subset of the tests (a few minutes, 2 cores)
#   bash tools/sanitize.sh -- -k dice # full mode, extra arguments passed to pytest
#
#   PYTHON       interpreter with torch (default: .venv/bin/python, else python3)
#   SANITIZE_DIR work folder (default: build/sanitize; git-ignored)
#   CXX          compiler (default: c++); its libasan is the runtime that is preloaded
#
# Nothing of the normal build is touched: the working tree's tracked and
# untracked-but-not-ignored files are copied to $SANITIZE_DIR/src, the extension is
# built in place there (objects in $SANITIZE_DIR/tmp, so a rerun recompiles only
# what changed), and everything runs from that copy with PYTHONPATH pointing at it,
# so tests that start subprocesses or read repository files use the sanitized build.
# Python and torch are not instrumented: ASan checks our code's memory accesses
# (to tensors, which torch allocates with malloc/posix_memalign and ASan tracks to
# the byte) and UBSan our code's undefined behaviour.
#
# Verdict: the last line says PASS, FINDINGS (a sanitizer report, printed above and
# kept in $SANITIZE_DIR/reports) or FAILED (a step failed without a report, e.g. a
# test failure or a timeout); the exit status is 0 only for PASS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=full
PYTEST_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --full) MODE=full ;;
    --) shift; PYTEST_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools/sanitize.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
CXX=${CXX:-c++}
SAN=${SANITIZE_DIR:-$ROOT/build/sanitize}
mkdir -p "$SAN"
SAN=$(cd "$SAN" && pwd)
SRC=$SAN/src
REPORTS=$SAN/reports
start=$(date +%s)
step() { echo; echo "=== sanitize ($MODE): $* ($(( $(date +%s) - start )) s)"; }

# -fsanitize=address,undefined: out-of-bounds / use-after-free / double free, and
#   UB (signed overflow, misaligned or null access, invalid shifts, bad enum/bool
#   values, out-of-range array index, ...).  Not float-divide-by-zero nor
#   float-cast-overflow: the kernels compute with inf/NaN on purpose.
# -fno-sanitize-recover=all: a UBSan finding aborts (by default UBSan prints and
#   carries on, and the run would pass).
# -fno-omit-frame-pointer -g: readable stacks.
# -fno-wrapv: Python's own CFLAGS (which these replace) have -fwrapv, which defines
#   signed overflow and hides it from UBSan; the CMake build has no -fwrapv.
# -DNDEBUG: as the normal build (torch's headers' debug-only checks stay off).
# No -O here: setup.py's -O3 applies, so the vectorised code users run is checked.
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -fno-wrapv -DNDEBUG"
ASAN_RT=$("$CXX" -print-file-name=libasan.so)
if [ ! -e "$ASAN_RT" ]; then
  echo "tools/sanitize.sh: $CXX has no libasan.so ($ASAN_RT); install its sanitizer runtime (e.g. libasan8)" >&2
  exit 2
fi
ASAN_RT=$(readlink -f "$ASAN_RT")
STDCXX_RT=$(readlink -f "$("$CXX" -print-file-name=libstdc++.so)")

step "copy the working tree to $SRC"
# Tracked files and untracked ones that git does not ignore (so local edits are
# checked).  A file is copied only when its content differs from the copy's, and
# then gets a new modification time: ninja recompiles exactly what changed (also
# when a file goes back to older content), the rest of the build is reused.
rm -rf "$REPORTS"
mkdir -p "$SRC" "$REPORTS"
git ls-files -z --cached --others --exclude-standard > "$SAN/files.new"
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue  # deleted in the working tree
  if ! cmp -s "$f" "$SRC/$f"; then
    mkdir -p "$SRC/$(dirname "$f")" && cp "$f" "$SRC/$f"
  fi
done < "$SAN/files.new"
if [ -f "$SAN/files" ]; then  # files that were copied last time and are gone now
  comm -z -23 <(sort -z "$SAN/files") <(sort -z "$SAN/files.new") \
    | while IFS= read -r -d '' f; do rm -f "$SRC/$f"; done
fi
mv "$SAN/files.new" "$SAN/files"

step "build momkernels._C with -fsanitize=address,undefined (CPU only; $CXX, log: $SAN/build.log)"
# setuptools takes CFLAGS in place of Python's compile flags and adds LDFLAGS to the
# link; torch's BuildExtension passes both on (also to ninja), so setup.py is unchanged.
# --force: always hand over to ninja, which also sees header changes (setuptools alone
# compares only the .cpp files' times with the .so's).
if ! (cd "$SRC" && FORCE_CUDA=0 CXX="$CXX" CFLAGS="$SAN_FLAGS" CXXFLAGS="$SAN_FLAGS" \
      LDFLAGS="-fsanitize=address,undefined" MAX_JOBS=${MAX_JOBS:-1} \
      "$PYTHON" setup.py build_ext --inplace --force --build-temp "$SAN/tmp" > "$SAN/build.log" 2>&1); then
  tail -40 "$SAN/build.log"
  echo "sanitize: FAILED: the sanitized build did not compile (log: $SAN/build.log)"
  exit 1
fi
SO=$(ls "$SRC"/momkernels/_C*.so)
# (grep without -q: it reads all of nm's output; with -q it may exit first, nm then
# dies of SIGPIPE and under pipefail the pipeline fails although the symbol is there)
if ! nm -D --undefined-only "$SO" | grep __asan_report_load > /dev/null; then
  echo "sanitize: FAILED: $SO is not instrumented (no __asan_report_* imports); were the flags dropped?"
  exit 1
fi
echo "built $SO ($(ldd "$SO" | grep -oE 'lib(asan|ubsan)\.so[.0-9]*' | sort -u | tr '\n' ' '))"

# The runtime environment of every Python step (and of the subprocesses the tests start).
#   LD_PRELOAD: the ASan runtime must be loaded before anything else (python is not
#     built with ASan, and the instrumented _C.so is dlopen'ed late).  libubsan is
#     a dependency of _C.so and needs no preload.  libstdc++ right after it: python
#     does not link it, so at ASan's start its __cxa_throw interceptor finds no real
#     __cxa_throw, and the first C++ exception (triton's import throws one, so does
#     every c10::Error) dies in "CHECK failed: ... real___cxa_throw != 0".
#   detect_leaks=0: CPython and torch keep allocations until exit on purpose; LSan
#     would report those, not ours (the C++ unit test below runs with leak checks).
#   allocator_may_return_null=1: a malloc that cannot be served returns NULL as
#     malloc does without ASan (torch then raises its out-of-memory error) instead
#     of ASan aborting on the request's size.
#   log_path: every report (also from subprocesses) lands in $REPORTS, so a finding
#     in a subprocess whose failure a test expects still fails this run.
#   abort_on_error=0, halt_on_error=1 (ASan's default): stop at the first report,
#     exit status 1.
export LD_PRELOAD=$ASAN_RT:$STDCXX_RT${LD_PRELOAD:+:$LD_PRELOAD}
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=0:log_path=$REPORTS/asan:${SANITIZE_EXTRA_ASAN_OPTIONS:-}
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan
export PYTHONPATH=$SRC
export FORCE_CUDA=0

failed=()
findings() { ls "$REPORTS" 2>/dev/null | wc -l; }
run() {  # run NAME CMD...: in $SRC; a non-zero exit or a new report fails the step
  local name=$1 before rc=0 t0=$(date +%s); shift
  before=$(findings)
  step "$name"
  (cd "$SRC" && "$@") || rc=$?
  if [ "$(findings)" != "$before" ]; then
    echo "--- $name: sanitizer report(s):"; failed+=("$name (sanitizer report)")
  elif [ $rc -ne 0 ]; then
    failed+=("$name (exit $rc)")
  fi
  echo "--- $name: exit $rc, $(( $(date +%s) - t0 )) s"
}

loads_sanitized() {  # the extension that loads, from anywhere, is the sanitized one
  (cd / && "$PYTHON" - "$SO" <<'PY'
import os, sys
import momkernels
from momkernels import ops
assert ops.load_error() is None, ops.load_error()
import momkernels._C as C
assert os.path.samefile(C.__file__, sys.argv[1]), (C.__file__, sys.argv[1])
print("momkernels from", os.path.dirname(momkernels.__file__), "| build:", ops.build_info())
PY
  )
}
run "the extension that loads is the sanitized one" loads_sanitized

# The C++ unit test, a plain executable: built and run with ASan+UBSan and leak checks.
cxx_unit_test() {
  "$CXX" -std=c++20 -O1 $SAN_FLAGS -Icsrc csrc/tests/test_mom_loss.cpp -o "$SAN/test_mom_loss" \
    && env -u LD_PRELOAD ASAN_OPTIONS="detect_leaks=1:log_path=$REPORTS/asan" "$SAN/test_mom_loss"
}
run "C++ unit test csrc/tests/test_mom_loss.cpp" cxx_unit_test

if [ "$MODE" = smoke ]; then
  run "python -m momkernels check --backend cpp" "$PYTHON" -m momkernels check --backend cpp
  # The tests that drive the C++ kernels hardest, on the cpp backend only: every
  # shape / stride / dtype grid, the edge cases (inf/NaN, N = 0, C = 1), the
  # semantics table, the out-of-range and error paths and the fused small-C path.
  run "pytest (smoke: kernel tests on the cpp backend)" env MOMKERNELS_TEST_BACKENDS=cpp \
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" -x \
    python_tests/test_edge_cases.py python_tests/test_semantics.py python_tests/test_errors.py \
    python_tests/test_regressions.py python_tests/test_mom_loss.py \
    "${PYTEST_EXTRA[@]}"
else
  run "python -m momkernels check" "$PYTHON" -m momkernels check
  run "pytest python_tests -m \"not slow\"" "$PYTHON" -m pytest python_tests -q -p no:cacheprovider \
    -m "not slow" "${PYTEST_EXTRA[@]}"
fi

echo
n=$(findings)
if [ "$n" != 0 ]; then
  for f in "$REPORTS"/*; do echo "===== $f"; cat "$f"; done
fi
total=$(( $(date +%s) - start ))
if [ "$n" != 0 ]; then
  echo "sanitize ($MODE): FINDINGS: $n sanitizer report(s) in $REPORTS (printed above); failed: ${failed[*]} ($total s)"
  exit 1
elif [ ${#failed[@]} -ne 0 ]; then
  echo "sanitize ($MODE): FAILED without a sanitizer report: ${failed[*]} ($total s)"
  exit 1
fi
echo "sanitize ($MODE): PASS: no AddressSanitizer or UndefinedBehaviorSanitizer findings ($total s)"
