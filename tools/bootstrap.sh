#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment .venv with PyTorch and the tools
# the tests and benchmarks use, then momkernels compiled against that torch.
# Idempotent: re-running rebuilds the extension.
#
#   bash tools/bootstrap.sh            # CPU kernels (+ CUDA kernels if a GPU is visible)
#   FORCE_CUDA=1 bash tools/bootstrap.sh   # also compile the CUDA kernels without a GPU (CI)
#
# By default momkernels is installed in editable mode (pip install -e): the
# extension is compiled into the checkout (momkernels/_C*.so, git-ignored) and
# .venv imports the checkout, so `.venv/bin/python -m momkernels ...` run from
# the repository root (which imports ./momkernels) uses the compiled kernels,
# and edits to the Python files need no reinstall (the C++/CUDA ones need a
# re-run).
#
# Another environment beside it, e.g. the oldest torch we support (CI):
#
#   VENV=.venv-oldest TORCH_SPEC=torch==2.11.0 TOOLS=test INSTALL=wheel FORCE_CUDA=0 \
#       bash tools/bootstrap.sh
#
#   VENV        the environment's folder (default .venv)
#   TORCH_SPEC  pip requirement(s) for torch, space-separated (default torch==2.14.1;
#               torch pins its matching triton)
#   TOOLS       all (default: tests, benchmarks, examples/) or test (pytest, hypothesis, numpy)
#   INSTALL     editable (default) or wheel: a regular install into VENV, which leaves
#               the checkout's in-place extension (built against .venv's torch) alone
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TOOLS=${TOOLS:-all}
INSTALL=${INSTALL:-editable}
tools=(numpy pytest hypothesis)
case "$TOOLS" in
  all) tools+=(pytest-benchmark matplotlib tqdm
               transformers accelerate tokenizers seqeval scipy optuna) ;;  # examples/ and their tests
  test) ;;
  *) echo "TOOLS=$TOOLS: expected all or test" >&2; exit 2 ;;
esac
case "$INSTALL" in
  editable) install=(-e .) ;;
  wheel) install=(.) ;;
  *) echo "INSTALL=$INSTALL: expected editable or wheel" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$(cd "$VENV" && pwd)/bin/python"
"$VPY" -m pip install -q --upgrade pip setuptools wheel ninja
# shellcheck disable=SC2086  # TORCH_SPEC may hold several requirements
"$VPY" -m pip install -q $TORCH_SPEC "${tools[@]}"

# The extension must be compiled against the torch it runs with, so no build
# isolation (an isolated build would compile against another torch wheel).
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-2}
"$VPY" -m pip install -q --no-build-isolation --no-deps --force-reinstall "${install[@]}"
(cd / && "$VPY" -m momkernels info)
