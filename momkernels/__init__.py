"""momkernels: fused kernels for the MoM (majority or minority) NER loss and for
softmax cross-entropy, as torch custom operators (C++/CUDA) and Triton kernels.

    import momkernels
    loss = momkernels.mom_cross_entropy(logits, labels, lam=0.175, o_index=o_id)
    loss = momkernels.cross_entropy(logits, labels)   # == F.cross_entropy

See docs/spec.md for the exact loss, README.md for backends and docs/bench/README.md
for measurements.
"""

# The oldest torch momkernels is built and tested with (CI's second environment,
# .venv-oldest); pyproject.toml's dependency and setup.py's build check say the
# same (python_tests/test_cli_and_loading.py checks that they agree).
MIN_TORCH = (2, 11)


def _check_torch_version(version: str) -> None:
    """ImportError for a torch older than MIN_TORCH (``version``: e.g. "2.11.0+cu130")."""
    import re

    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ImportError(
            f"momkernels needs torch >= {need}, found torch {version}: upgrade torch "
            f"(pip install 'torch>={need}'), then rebuild momkernels against it with\n"
            "    pip install --no-build-isolation --force-reinstall --no-deps .")


import torch  # noqa: E402

_check_torch_version(str(torch.__version__))
del torch

from .functional import (  # noqa: E402
    BackendUnavailableError,
    available_backends,
    cross_entropy,
    mom_cross_entropy,
)
from .nn import CrossEntropyLoss, MoMLoss  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "mom_cross_entropy",
    "cross_entropy",
    "MoMLoss",
    "CrossEntropyLoss",
    "available_backends",
    "BackendUnavailableError",
    "__version__",
]
