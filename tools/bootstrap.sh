#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment .venv with PyTorch and the tools
# the tests and benchmarks use, then momkernels compiled against that torch and
# installed into it.  Idempotent: re-running rebuilds the extension.
#
#   bash tools/bootstrap.sh            # CPU kernels (+ CUDA kernels if a GPU is visible)
#   FORCE_CUDA=1 bash tools/bootstrap.sh   # also compile the CUDA kernels without a GPU (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel ninja
.venv/bin/python -m pip install -q "$TORCH_SPEC" numpy pytest hypothesis pytest-benchmark matplotlib tqdm \
    transformers accelerate tokenizers seqeval scipy optuna   # examples/ and their tests (python_tests/test_examples_ner.py, ...)

# The extension must be compiled against the torch it runs with, so no build
# isolation (an isolated build would compile against another torch wheel).
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-2}
.venv/bin/python -m pip install -q --no-build-isolation --no-deps --force-reinstall .
(cd / && "$OLDPWD/.venv/bin/python" -m momkernels info)
