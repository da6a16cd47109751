"""Public functions: the options, the tensor checks, the shapes, the backend.

Path of one call: ``mom_cross_entropy`` -> ``LossOptions(...)`` (options.py:
every scalar argument checked once) -> ``forward``: ``o_index`` < C and the
tensor checks (metadata only) -> ``backends.resolve`` (the backend's row of
the table, "auto" chosen there) -> ``rows.as_rows`` ((rows, C) logits,
(rows,) targets) -> ``backends.compute`` (the backend's loss function, e.g.
``ops.mom_loss`` -> ``torch.ops.momkernels.mom_loss_fwd``) -> reshape for
``reduction="none"``.  ``MoMLoss`` keeps its ``LossOptions`` and calls
``forward`` directly.

Nothing here reads tensor data unless the caller asks for eager target checks
(``check_targets=True`` or ``MOMKERNELS_CHECK=1``), so forward and backward
make no host synchronisation and compile with ``fullgraph=True``.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import Tensor

from . import backends
from .backends import BackendUnavailableError, available_backends
from .options import LossOptions
from .rows import as_rows, check_target_range

__all__ = [
    "mom_cross_entropy",
    "cross_entropy",
    "available_backends",
    "BackendUnavailableError",
    "forward",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TARGET_DTYPES = (torch.int64, torch.int32)


# ----------------------------------------------------------------- checks


def _check_tensors(input, target, weight) -> int:
    """Checks of the tensor arguments (metadata only); returns C."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor of logits; got {type(input).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor of class indices; got {type(target).__name__}")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            "input must hold floating-point logits (float16, bfloat16, float32 or float64); "
            f"got dtype {input.dtype}")
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: shape (C,), (N, C) or "
                         "(N, C, d1, ...); got a 0-dim tensor")
    C = input.shape[0] if input.dim() == 1 else input.shape[1]
    if target.dtype not in _TARGET_DTYPES:
        if target.is_floating_point() and target.shape == input.shape:
            raise TypeError(
                "soft (probability) targets are not supported by momkernels: target must hold "
                f"class indices (int64 or int32); got a {target.dtype} tensor shaped like input")
        raise TypeError(f"target must hold class indices as int64 (int32 accepted); "
                        f"got dtype {target.dtype}")
    expected = () if input.dim() == 1 else (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match input shape "
            f"{tuple(input.shape)}: expected target shape {expected}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")
    if C < 1:
        raise ValueError(f"input needs at least one class (C >= 1); got shape {tuple(input.shape)}")
    if weight is not None:
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a Tensor of shape (C,); got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be floating point; got dtype {weight.dtype}")
        if weight.dim() != 1 or weight.shape[0] != C:
            raise ValueError(f"weight must have shape (C,) = ({C},); got {tuple(weight.shape)}")
        if weight.device != input.device:
            raise ValueError(f"weight is on {weight.device} but input is on {input.device}")
    return C


def _targets_checked_eagerly(check_targets: bool) -> bool:
    return check_targets or os.environ.get("MOMKERNELS_CHECK", "0") not in ("", "0")


# ----------------------------------------------------------------- public API


def forward(input: Tensor, target: Tensor, weight: Optional[Tensor],
            options: LossOptions) -> Tensor:
    """The loss of ``input`` and ``target`` for validated ``options``: the path
    shared by ``mom_cross_entropy``, ``cross_entropy`` and ``MoMLoss``."""
    o_index = options.o_index
    if o_index is not None and isinstance(input, Tensor) and input.dim() > 0:
        n = input.shape[0] if input.dim() == 1 else input.shape[1]
        if not (0 <= o_index < n):
            raise ValueError(f"o_index must be in [0, C) = [0, {n}); got {o_index}")
    C = _check_tensors(input, target, weight)
    if _targets_checked_eagerly(options.check_targets):
        check_target_range(target, C, options.ignore_index)
    backend = backends.resolve(options.backend, input.device)
    x, t = as_rows(input, target)
    out = backends.compute(backend, x, t, weight, options)
    if options.reduction == "none":
        out = out.reshape(target.shape)
    return out


def mom_cross_entropy(
    input: Tensor,
    target: Tensor,
    lam: float = 0.5,
    *,
    o_index: int = 0,
    ignore_index: int = -100,
    weight: Optional[Tensor] = None,
    loss: str = "ce",
    gamma: float = 2.0,
    dice_alpha: float = 1.0,
    dice_smooth: float = 0.01,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    mom_norm: Union[str, float] = "valid",
    backend: str = "auto",
    check_targets: bool = False,
    inplace_backward: bool = False,
) -> Tensor:
    r"""MoM loss (Nemoto, Kitada & Iyatomi, IEEE Access 2025) of logits.

    ``lam * L + (1 - lam) * L_MoM``, where ``L_MoM`` is the same per-token loss
    summed over tokens whose gold label is ``o_index`` (the majority class,
    ``O`` in NER).  See docs/spec.md for the exact formula of every option.

    Args:
        input: logits ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``, float16,
            bfloat16, float32 or float64, any strides.
        target: class indices (int64, or int32), shape of ``input`` without C;
            ``ignore_index`` marks rows that contribute nothing.
        lam: weight of the ordinary loss, in [0, 1]; 1 is plain cross-entropy.
        o_index: class index of the majority label ``O``.
        weight: optional per-class weights ``(C,)``.
        loss: per-token loss, ``"ce"``, ``"focal"`` (``gamma``) or ``"dice"``
            (``dice_alpha``, ``dice_smooth``).
        label_smoothing: as in ``F.cross_entropy`` (``loss="ce"`` only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        mom_norm: denominator D_MoM of the MoM term under ``"mean"``:
            ``"valid"`` (weighted valid tokens, as the first term), ``"rows"``
            (all rows, ignored ones included), or a positive number used as
            it is.  The paper divides by sentences x M with M its fixed padded
            length (128): with dynamically padded batches pass
            ``mom_norm=labels.shape[0] * 128`` (docs/spec.md).
        backend: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"torch"``.
        check_targets: raise IndexError for out-of-range targets before any
            kernel runs (reads the targets: a host sync). ``MOMKERNELS_CHECK=1``
            turns it on globally.
        inplace_backward: ``backend="triton"`` only: the backward writes the
            gradient over ``input``'s memory instead of a new buffer.  Unsafe
            whenever ``input``'s values are needed after the backward: see
            momkernels/triton/__init__.py.
    """
    options = LossOptions(
        lam=lam, o_index=o_index, ignore_index=ignore_index, loss=loss, gamma=gamma,
        dice_alpha=dice_alpha, dice_smooth=dice_smooth, label_smoothing=label_smoothing,
        reduction=reduction, mom_norm=mom_norm, backend=backend, check_targets=check_targets,
        inplace_backward=inplace_backward)
    return forward(input, target, weight, options)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    backend: str = "auto",
    check_targets: bool = False,
) -> Tensor:
    """Drop-in for ``torch.nn.functional.cross_entropy`` with class-index targets.

    Equal to PyTorch's for every argument combination it accepts (it is the MoM
    loss with ``lam=1``); soft (probability) targets are rejected.
    """
    options = LossOptions.cross_entropy(
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        backend=backend, check_targets=check_targets)
    return forward(input, target, weight, options)
