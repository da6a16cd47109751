"""``nn.Module`` wrappers of the functional API."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .functional import _check_options, cross_entropy, mom_cross_entropy

__all__ = ["MoMLoss", "CrossEntropyLoss"]


class MoMLoss(nn.Module):
    """The MoM loss as a module; arguments as :func:`momkernels.mom_cross_entropy`.

    ``weight`` is a buffer, so it follows ``.to(device)`` with the model.
    ``forward(input, target, mom_norm=...)`` overrides ``mom_norm`` for one
    call: the paper's normalisation with dynamically padded batches changes
    with the batch (``mom_norm=labels.shape[0] * 128``, docs/spec.md).
    """

    def __init__(self, lam: float = 0.5, *, o_index: int = 0, ignore_index: int = -100,
                 weight: Optional[Tensor] = None, loss: str = "ce", gamma: float = 2.0,
                 dice_alpha: float = 1.0, dice_smooth: float = 0.01,
                 label_smoothing: float = 0.0, reduction: str = "mean",
                 mom_norm: Union[str, float] = "valid",
                 backend: str = "auto", check_targets: bool = False) -> None:
        super().__init__()
        _check_options(lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
                       label_smoothing, reduction, mom_norm, backend)
        self.lam = lam
        self.o_index = o_index
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)
        self.loss = loss
        self.gamma = gamma
        self.dice_alpha = dice_alpha
        self.dice_smooth = dice_smooth
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.mom_norm = mom_norm
        self.backend = backend
        self.check_targets = check_targets

    def forward(self, input: Tensor, target: Tensor, *,
                mom_norm: Union[str, float, None] = None) -> Tensor:
        return mom_cross_entropy(
            input, target, self.lam, o_index=self.o_index, ignore_index=self.ignore_index,
            weight=self.weight, loss=self.loss, gamma=self.gamma, dice_alpha=self.dice_alpha,
            dice_smooth=self.dice_smooth, label_smoothing=self.label_smoothing,
            reduction=self.reduction, mom_norm=self.mom_norm if mom_norm is None else mom_norm,
            backend=self.backend,
            check_targets=self.check_targets)

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, o_index={self.o_index}, loss={self.loss!r}, "
                f"reduction={self.reduction!r}, mom_norm={self.mom_norm!r}, "
                f"backend={self.backend!r}")


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
