"""The compiled operators ``torch.ops.momkernels.*`` (backend ``"cpp"``).

Importing ``momkernels._C`` runs the C++ ``TORCH_LIBRARY`` registrations
(schemas in csrc/registration.cpp, CPU kernels in csrc/cpu/, CUDA kernels in
csrc/cuda/).  This module adds what the dispatcher needs from Python:

* ``register_fake`` -- shape-only kernels, so ``torch.compile`` and
  ``torch.library.opcheck`` can trace the ops without running them;
The autograd formula is registered in C++ (csrc/autograd.cpp): the backward
of ``mom_loss_fwd`` is the second operator, ``mom_loss_bwd``, and no Python
runs in a training step beyond the call itself.  For small C on the CPU
(C <= 64, any float dtype) the Autograd kernel calls ``mom_loss_fwd_fused``
instead, which also returns the gradient for a unit upstream gradient, and
the backward is the in-place ``mom_loss_bwd_fused_`` (one multiply), or
nothing for ``loss.backward()``.  A half-precision gradient is not rescaled
(that would round it twice): for an upstream gradient other than 1 the
backward is ``mom_loss_bwd``.

If the extension cannot be loaded (not built, or built against another torch),
``load_error()`` says why and how to rebuild; the ``"cpp"`` backend is then
reported unavailable instead of failing with an undefined-symbol traceback.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .options import LossOptions
from .rows import math_dtype

REBUILD_HINT = (
    "rebuild it against the installed torch with\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps .\n"
    "from a momkernels checkout (add FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda for the CUDA kernels)"
)

_load_error: Optional[str] = None
try:
    from . import _C  # noqa: F401  -- importing runs the operator registrations
except (ImportError, OSError) as e:  # OSError: undefined symbols, wrong ABI
    _load_error = f"momkernels' C++ extension (momkernels._C) could not be loaded: {e}"


def load_error() -> Optional[str]:
    """Why the extension is unusable (with how to rebuild), or None when it loaded."""
    return None if _load_error is None else f"{_load_error}\nTo fix it, {REBUILD_HINT}"


def is_available() -> bool:
    return _load_error is None


# Read once, here: the op returns a string, which torch.compile cannot trace
# ("torch.* op returned non-Tensor"), and has_cuda() is asked while tracing
# (backends.py: the availability of "cpp" for CUDA tensors).
_BUILD_INFO: dict[str, str] = {} if _load_error is not None else dict(
    kv.split("=", 1) for kv in torch.ops.momkernels.build_info().split(";"))


def build_info() -> dict[str, str]:
    """Flags the extension was built with, e.g. {'cpu_isa': 'AVX512', 'cuda': '0'}."""
    return dict(_BUILD_INFO)


def has_cuda() -> bool:
    return _BUILD_INFO.get("cuda") == "1"


if _load_error is None:

    @torch.library.register_fake("momkernels::mom_loss_fwd")
    def _mom_loss_fwd_fake(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                           dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                           mom_denom=0.0):
        torch._check(input.dim() == 2, lambda: "momkernels: input must be (N, C)")
        torch._check(target.dim() == 1, lambda: "momkernels: target must be (N,)")
        torch._check(target.shape[0] == input.shape[0], lambda: "momkernels: N mismatch")
        n = input.shape[0]
        acc = math_dtype(input.dtype)
        out = input.new_empty((n,) if reduction == "none" else ())
        return out, input.new_empty((n, 2), dtype=acc), input.new_empty((2,), dtype=acc)

    @torch.library.register_fake("momkernels::mom_loss_fwd_fused")
    def _mom_loss_fwd_fused_fake(input, target, weight, lam, o_index, ignore_index, loss, gamma,
                                 dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm,
                                 mom_denom=0.0):
        out, stats, coef = _mom_loss_fwd_fake(input, target, weight, lam, o_index, ignore_index,
                                              loss, gamma, dice_alpha, dice_smooth,
                                              label_smoothing, reduction, mom_norm)
        grad = torch.empty(input.shape, dtype=input.dtype, device=input.device)
        return out, stats, coef, grad, input.new_empty((3,), dtype=math_dtype(input.dtype))

    @torch.library.register_fake("momkernels::mom_loss_bwd_fused_")
    def _mom_loss_bwd_fused_fake(grad_fused, grad, target, gscale, o_index, ignore_index):
        return None

    @torch.library.register_fake("momkernels::mom_loss_bwd")
    def _mom_loss_bwd_fake(grad, input, target, weight, stats, coef, o_index, ignore_index, loss,
                           gamma, dice_alpha, dice_smooth, label_smoothing):
        return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def mom_loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
             options: LossOptions) -> Tensor:
    """The loss of (N, C) logits via the compiled operator (backend "cpp"):
    ``options`` flattened to the schema of csrc/registration.cpp."""
    out, _, _ = torch.ops.momkernels.mom_loss_fwd(input, target, weight, *options.op_args())
    return out
