"""The ``"triton"`` backend of momkernels: fused Triton kernels for the MoM loss.

    import momkernels
    loss = momkernels.mom_cross_entropy(logits, labels, 0.175, backend="triton")
    # or, with the gradient written over the logits (see below):
    loss = momkernels.mom_cross_entropy(logits, labels, 0.175, backend="triton",
                                        inplace_backward=True)

Where it runs: CUDA (and ROCm) tensors; CPU tensors only under the Triton
interpreter (``TRITON_INTERPRET=1`` in the environment *before* triton or
this module is imported -- slow, ~3 ms per program instance, for tests).

Files: ``kernels.py`` (the ``@triton.jit`` kernels, their math and the
block-size table), ``ops.py`` (the ``torch.library.triton_op`` operators and
their autograd).  Every docs/spec.md option is supported: ce / focal / dice,
class weights, label smoothing, ignore_index, o_index, lam, reduction
none / sum / mean, mom_norm valid / rows / a number, float16 / bfloat16 / float32
logits with any strides, int32 / int64 targets.

float64 logits: the kernels compute in float32, which docs/spec.md does not allow
for float64 input, so the backend table (momkernels/backends.py) hands float64
to the ``"cpp"`` backend (or the ``"torch"`` reference when the extension is
not built).  The result is correct; it just is not a Triton kernel.

``inplace_backward=True`` (off by default; a keyword of
``momkernels.mom_cross_entropy`` and ``MoMLoss`` that only ``backend="triton"``
accepts) writes the gradient into the logits' own memory instead of a new
(N, C) buffer -- the Liger-Kernel trick, saving one logits-sized allocation
in the backward.  After ``backward()`` the logits tensor holds the gradient.
It is UNSAFE whenever the logits' values are needed after this loss's
backward has run:

* the logits feed another loss or op whose backward needs them (autograd
  then raises "modified by an inplace operation" if that backward runs after
  ours, but is silently fine only by luck of the order), or you backward
  through the graph twice (``retain_graph=True``);
* you read the logits after ``backward()`` (metrics, argmax predictions,
  logging), or they are a view of a tensor you still use;
* the logits are a leaf you keep (their ``.data`` is overwritten).

It is safe in the usual training step where the logits are produced by the
model head and only consumed by this loss.  For logits whose rows overlap or
whose classes are not unit-stride (``expand``-ed, transposed), and for float64
logits (computed by another backend), the in-place request is ignored and a
new buffer is used.

Targets outside [0, C) that are not ``ignore_index`` are never used as an
address: their row's loss and gradient row are NaN (so is any reduced loss
containing the row; docs/SEMANTICS.md S10);
``momkernels.mom_cross_entropy(..., check_targets=True)`` or
``MOMKERNELS_CHECK=1`` raises an IndexError eagerly instead.

Forward and backward make no device-to-host synchronisation: valid-token
counts and the mean's denominator are reduced on the device by a one-program
kernel, so the loss can be captured in CUDA graphs and compiled with
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..options import LossOptions

__all__ = ["mom_loss", "is_available", "unavailable_reason"]

_import_error: Optional[str] = None
try:
    from . import kernels as _kernels
    from . import ops as _ops
except ImportError as e:  # triton missing (or too old for torch.library.triton_op)
    _import_error = str(e)


def unavailable_reason(device: torch.device | str) -> Optional[str]:
    """None when the Triton kernels can run on ``device``; otherwise why not and how to fix it."""
    device = torch.device(device)
    if _import_error is not None:
        if "triton" in _import_error and "No module named" in _import_error:
            return "triton is not installed: pip install triton"
        return f"the Triton backend could not be imported: {_import_error}"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _kernels.INTERPRET:
            return None
        return ("on CPU tensors the Triton kernels run only under TRITON_INTERPRET=1 (set it in "
                "the environment before triton/momkernels is imported); use backend='cpp' "
                "or 'torch' for CPU tensors")
    return (f"backend='triton' runs on CUDA tensors (and on CPU tensors under "
            f"TRITON_INTERPRET=1), not on {device.type}")


def is_available(device: torch.device | str = "cuda") -> bool:
    return unavailable_reason(device) is None


def mom_loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
             options: LossOptions) -> Tensor:
    """The MoM loss of (N, C) float16/bfloat16/float32 logits and (N,) targets
    with the Triton kernels: the ``"triton"`` row of momkernels/backends.py.

    ``options`` are validated (``momkernels.options.LossOptions``), and
    ``options.inplace_backward`` asks for the in-place backward (see the
    module docstring for when it is unsafe).
    """
    if _import_error is not None:
        raise RuntimeError(unavailable_reason(input.device))
    return _ops.mom_loss(input, target, weight, options)
