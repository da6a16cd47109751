"""momkernels: fused kernels for the MoM (majority or minority) NER loss and for
softmax cross-entropy, as torch custom operators (C++/CUDA) and Triton kernels.

    import momkernels
    loss = momkernels.mom_cross_entropy(logits, labels, lam=0.175, o_index=o_id)
    loss = momkernels.cross_entropy(logits, labels)   # == F.cross_entropy

See docs/spec.md for the exact loss and README.md for backends and numbers.
"""

from .functional import (
    BackendUnavailableError,
    available_backends,
    cross_entropy,
    mom_cross_entropy,
)
from .nn import CrossEntropyLoss, MoMLoss

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
