"""``nn.Module`` wrappers of the functional API."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from . import functional
from .functional import cross_entropy
from .options import LossOptions

__all__ = ["MoMLoss", "CrossEntropyLoss"]


def _option(name: str) -> property:
    """``MoMLoss.<name>``: a field of the module's options; setting it checks
    the new value and replaces the options."""
    def get(self):
        return getattr(self.options, name)

    def set(self, value):
        self.options = self.options.replace(**{name: value})

    return property(get, set, doc=f"``options.{name}`` (see momkernels.options.LossOptions)")


class MoMLoss(nn.Module):
    """The MoM loss as a module; arguments as :func:`momkernels.mom_cross_entropy`.

    The scalar arguments are checked once, here, and kept as one
    ``momkernels.options.LossOptions`` (``self.options``; ``self.lam`` etc.
    read and replace its fields).  ``weight`` is a buffer, so it follows
    ``.to(device)`` with the model.  ``forward(input, target, mom_norm=...)``
    overrides ``mom_norm`` for one call: the paper's normalisation with
    dynamically padded batches changes with the batch
    (``mom_norm=labels.shape[0] * 128``, docs/spec.md).
    """

    def __init__(self, lam: float = 0.5, *, o_index: int = 0, ignore_index: int = -100,
                 weight: Optional[Tensor] = None, loss: str = "ce", gamma: float = 2.0,
                 dice_alpha: float = 1.0, dice_smooth: float = 0.01,
                 label_smoothing: float = 0.0, reduction: str = "mean",
                 mom_norm: Union[str, float] = "valid",
                 backend: str = "auto", check_targets: bool = False,
                 inplace_backward: bool = False) -> None:
        super().__init__()
        self.options = LossOptions(
            lam=lam, o_index=o_index, ignore_index=ignore_index, loss=loss, gamma=gamma,
            dice_alpha=dice_alpha, dice_smooth=dice_smooth, label_smoothing=label_smoothing,
            reduction=reduction, mom_norm=mom_norm, backend=backend,
            check_targets=check_targets, inplace_backward=inplace_backward)
        self.register_buffer("weight", weight)

    lam = _option("lam")
    o_index = _option("o_index")
    ignore_index = _option("ignore_index")
    loss = _option("loss")
    gamma = _option("gamma")
    dice_alpha = _option("dice_alpha")
    dice_smooth = _option("dice_smooth")
    label_smoothing = _option("label_smoothing")
    reduction = _option("reduction")
    mom_norm = _option("mom_norm")
    backend = _option("backend")
    check_targets = _option("check_targets")
    inplace_backward = _option("inplace_backward")

    def forward(self, input: Tensor, target: Tensor, *,
                mom_norm: Union[str, float, None] = None) -> Tensor:
        options = self.options if mom_norm is None else self.options.replace(mom_norm=mom_norm)
        return functional.forward(input, target, self.weight, options)

    def extra_repr(self) -> str:
        o = self.options
        return (f"lam={o.lam}, o_index={o.o_index}, loss={o.loss!r}, "
                f"reduction={o.reduction!r}, mom_norm={o.mom_norm!r}, "
                f"backend={o.backend!r}")


class CrossEntropyLoss(nn.Module):
    """Mirrors ``torch.nn.CrossEntropyLoss`` (class-index targets) with a ``backend``."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None,
                 ignore_index: int = -100, reduce=None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, backend: str = "auto") -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            # the deprecated pair maps onto reduction exactly as in PyTorch
            reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             backend=self.backend)
