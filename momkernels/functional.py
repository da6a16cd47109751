"""Public functions: argument checks, shapes, backend dispatch.

Path of one call: ``mom_cross_entropy`` -> ``_check_*`` (host-side, no data
access) -> ``as_rows`` ((N, C) logits, (N,) targets) -> the backend's loss
function (``ops.mom_loss`` -> ``torch.ops.momkernels.mom_loss_fwd``, or the
Triton op, or ``reference``) -> reshape for ``reduction="none"``.

Nothing here reads tensor data unless the caller asks for eager target checks
(``check_targets=True`` or ``MOMKERNELS_CHECK=1``), so forward and backward
make no host synchronisation and compile with ``fullgraph=True``.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from . import ops, reference
from .reference import as_rows

__all__ = [
    "mom_cross_entropy",
    "cross_entropy",
    "available_backends",
    "BackendUnavailableError",
]

LOSSES = ("ce", "focal", "dice")
REDUCTIONS = ("mean", "sum", "none")
MOM_NORMS = ("valid", "rows")
BACKENDS = ("auto", "triton", "cpp", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TARGET_DTYPES = (torch.int64, torch.int32)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and how to get it."""


# ----------------------------------------------------------------- backends


def _torch_loss(x, t, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                label_smoothing, reduction, mom_norm):
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        # docs/spec.md: on CPU an out-of-range target is an IndexError, as in PyTorch
        # (gather would raise a RuntimeError).  Reading CPU targets is no sync.
        check_target_range(t, x.shape[-1], ignore_index)
    return reference.mom_cross_entropy(
        x, t, lam, o_index=o_index, ignore_index=ignore_index, weight=weight, loss=loss,
        gamma=gamma, dice_alpha=dice_alpha, dice_smooth=dice_smooth,
        label_smoothing=label_smoothing, reduction=reduction, mom_norm=mom_norm)


def _triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on ``device``: triton importable and
    a CUDA tensor, or a CPU tensor under TRITON_INTERPRET=1 (momkernels/triton)."""
    from . import triton as triton_backend  # imports triton itself: only when asked

    return triton_backend.unavailable_reason(device)


def _triton_loss(x, t, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                 label_smoothing, reduction, mom_norm):
    # float64 logits are handed on to "cpp" (or "torch"): the kernels compute in float32
    from . import triton as triton_backend

    return triton_backend.mom_loss(x, t, weight, lam, o_index, ignore_index, loss, gamma,
                                   dice_alpha, dice_smooth, label_smoothing, reduction, mom_norm)


def _cpp_unavailable_reason(device: torch.device) -> Optional[str]:
    err = ops.load_error()
    if err is not None:
        return err
    if device.type == "cuda" and not ops.has_cuda():
        return ("momkernels' extension was built without CUDA: reinstall with\n"
                "    FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation "
                "--force-reinstall --no-deps .")
    if device.type not in ("cpu", "cuda"):
        return f"backend='cpp' has kernels for CPU and CUDA tensors, not {device.type}"
    return None


def _unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    if backend == "torch":
        return None
    if backend == "cpp":
        return _cpp_unavailable_reason(device)
    return _triton_unavailable_reason(device)


_LOSS_FN: dict[str, Callable[..., Tensor]] = {
    "torch": _torch_loss, "cpp": ops.mom_loss, "triton": _triton_loss}


def available_backends(device: Optional[torch.device | str] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CPU, and CUDA when present).

    ``"torch"`` (the reference) is always available.  ``"triton"`` needs the
    ``triton`` package and a CUDA tensor, or a CPU tensor under
    ``TRITON_INTERPRET=1``; its kernels compute in float32, so float64 logits
    given to it are computed by ``"cpp"`` (``"torch"`` if not built) instead.
    """
    if device is None:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    else:
        devices = [torch.device(device)]
    return [b for b in ("triton", "cpp", "torch")
            if any(_unavailable_reason(b, d) is None for d in devices)]


# backend="auto": the first available backend of the device's list.
#
#   device  preference              why
#   ------  ----------------------  ---------------------------------------------
#   cpu     cpp, torch              measured (bench/, docs/bench/): the C++
#                                   kernels beat the reference at every shape;
#                                   Triton on CPU is only the (slow) interpreter
#   cuda    cpp, triton, torch      cpp only when built with CUDA; NOT yet
#                                   measured against triton on a GPU (no GPU run
#                                   so far): revisit with bench/ numbers
#   other   torch
_AUTO_ORDER = {"cpu": ("cpp",), "cuda": ("cpp", "triton")}


def _auto_backend(device: torch.device) -> str:
    for b in _AUTO_ORDER.get(device.type, ()):
        if _unavailable_reason(b, device) is None:
            return b
    return "torch"


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return _auto_backend(device)
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise BackendUnavailableError(reason)
    return backend


# ----------------------------------------------------------------- checks


def _check_mom_norm(mom_norm) -> None:
    """"valid", "rows", or a positive finite number (int or float, not bool;
    a SymInt / SymFloat under torch.compile)."""
    if isinstance(mom_norm, str):
        if mom_norm not in MOM_NORMS:
            raise ValueError(f"mom_norm must be one of {MOM_NORMS} or a positive number; "
                             f"got {mom_norm!r}")
        return
    if isinstance(mom_norm, bool):
        raise ValueError(f"mom_norm must be one of {MOM_NORMS} or a positive number, not a "
                         f"bool; got {mom_norm!r}")
    if not isinstance(mom_norm, (numbers.Real, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"mom_norm must be one of {MOM_NORMS} or a positive number; got "
                        f"{type(mom_norm).__name__} {mom_norm!r}")
    if not 0 < mom_norm < math.inf:  # also rejects NaN
        raise ValueError(f"mom_norm must be a positive finite number when it is a number; "
                         f"got {mom_norm!r}")


def _check_options(lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                   label_smoothing, reduction, mom_norm, backend) -> None:
    """Checks of the scalar arguments (shared by the functions and the modules)."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a real number in [0, 1]; got {lam!r}")
    if not (0.0 <= lam <= 1.0):  # also rejects NaN
        raise ValueError(f"lam must be in [0, 1]; got {lam}")
    for name, v in (("o_index", o_index), ("ignore_index", ignore_index)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int; got {v!r}")
        if not -2**63 <= v < 2**63:
            raise ValueError(f"{name} must fit in int64; got {v}")
    if o_index == ignore_index:
        raise ValueError(f"o_index must differ from ignore_index; both are {o_index}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    _check_mom_norm(mom_norm)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0; got {gamma}")
    if not dice_alpha >= 0:
        raise ValueError(f"dice_alpha must be >= 0; got {dice_alpha}")
    if not dice_smooth > 0:
        raise ValueError(f"dice_smooth must be > 0; got {dice_smooth}")
    if not (0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing}")
    if label_smoothing > 0 and loss != "ce":
        raise ValueError(
            f"label_smoothing > 0 is only defined for loss='ce'; got loss={loss!r} "
            f"with label_smoothing={label_smoothing}")


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


def check_target_range(target: Tensor, C: int, ignore_index: int) -> None:
    """Raise IndexError if a target is outside [0, C) and not ignore_index.

    Reads the targets, so it synchronises with the device: opt-in only.
    """
    bad = reference.valid_rows(target, ignore_index) & ((target < 0) | (target >= C))
    if bool(bad.any()):
        first = int(target[bad].reshape(-1)[0])
        raise IndexError(f"Target {first} is out of bounds: targets must be in [0, {C}) "
                         f"or equal ignore_index={ignore_index}")


# ----------------------------------------------------------------- public API


def _loss(input, target, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha,
          dice_smooth, label_smoothing, reduction, mom_norm, backend, check_targets) -> Tensor:
    C = _check_tensors(input, target, weight)
    if _targets_checked_eagerly(check_targets):
        check_target_range(target, C, ignore_index)
    name = _resolve_backend(backend, input.device)
    x, t = as_rows(input, target)
    out = _LOSS_FN[name](x, t, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha,
                         dice_smooth, label_smoothing, reduction, mom_norm)
    if reduction == "none":
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
    """
    _check_options(lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                   label_smoothing, reduction, mom_norm, backend)
    if isinstance(input, Tensor):
        C = input.shape[0] if input.dim() == 1 else (input.shape[1] if input.dim() > 1 else None)
        if C is not None and not (0 <= o_index < C):
            raise ValueError(f"o_index must be in [0, C) = [0, {C}); got {o_index}")
    return _loss(input, target, weight, float(lam), o_index, ignore_index, loss, float(gamma),
                 float(dice_alpha), float(dice_smooth), float(label_smoothing), reduction,
                 mom_norm, backend, check_targets)


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
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int; got {ignore_index!r}")
    # o_index only matters for lam < 1; pick one that cannot collide (and that
    # fits in int64 whatever ignore_index is).
    o_index = -1 if ignore_index != -1 else -2
    _check_options(1.0, o_index, ignore_index, "ce", 2.0, 1.0, 0.01, label_smoothing, reduction,
                   "valid", backend)
    return _loss(input, target, weight, 1.0, o_index, ignore_index, "ce", 2.0, 1.0, 0.01,
                 float(label_smoothing), reduction, "valid", backend, check_targets)
