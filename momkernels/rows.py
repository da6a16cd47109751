"""Row helpers: what every backend, the reference and the integrations need to
read the logits and targets the same way.

Every backend computes on rows: logits ``(rows, C)`` and targets ``(rows,)``.
A row is *valid* when its target is not ``ignore_index`` (docs/spec.md §3);
valid rows enter the loss and the mean's denominator D, ignored rows
contribute nothing.  These helpers are the one definition of those words:
``reference.py`` (the oracle), ``functional.py`` (the public functions) and
``integrations/distributed.py`` (the global denominator) all import them from
here.

Nothing here reads tensor data except ``check_target_range``, which is opt-in
(docs/spec.md §8, "Eager check").
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["as_rows", "valid_rows", "valid_denominator", "math_dtype", "check_target_range"]


def as_rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """View logits of any docs/spec.md shape as (rows, C) and targets as (rows,).

    ``(C,)`` with a 0-dim target is one row; ``(N, C, d1, ...)`` moves the class
    dimension last (a copy only when that layout is not already a view).
    """
    if input.dim() == 2 and target.dim() == 1:
        return input, target  # already rows: no view op, no extra autograd node
    if input.dim() == 1:
        return input.unsqueeze(0), target.reshape(1)
    if input.dim() > 2:
        input = input.movedim(1, -1)
    C = input.shape[-1]
    return input.reshape(-1, C), target.reshape(-1)


def valid_rows(target: Tensor, ignore_index: int) -> Tensor:
    """``target != ignore_index``, exactly.

    Comparing an int32 tensor with a Python int outside the int32 range wraps
    the int (``int32 != 2**32`` compares with 0): such an ``ignore_index``
    cannot equal any int32 target, so every row is valid (as in the kernels,
    which compare in 64 bits; docs/SEMANTICS.md S11).
    """
    info = torch.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def valid_denominator(target: Tensor, weight: Optional[Tensor], ignore_index: int) -> Tensor:
    """D of the mean on this process: the number of valid targets, or
    sum of w_y over them with class weights (PyTorch's weighted-mean
    denominator).  Detached, float32 (float64 for float64 weights), on
    ``target``'s device."""
    t = target.reshape(-1)
    valid = valid_rows(t, ignore_index)
    if weight is None:
        return valid.sum().to(torch.float32)
    safe = torch.where(valid, t, torch.zeros_like(t)).long()
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return (weight.detach().to(device=t.device, dtype=dt)[safe] * valid.to(dt)).sum()


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss is computed in for logits of ``dtype`` (docs/spec.md §4):
    float64 for float64 logits, float32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_target_range(target: Tensor, C: int, ignore_index: int) -> None:
    """Raise IndexError if a target is outside [0, C) and not ignore_index.

    Reads the targets, so it synchronises with the device: opt-in only.
    """
    bad = valid_rows(target, ignore_index) & ((target < 0) | (target >= C))
    if bool(bad.any()):
        first = int(target[bad].reshape(-1)[0])
        raise IndexError(f"Target {first} is out of bounds: targets must be in [0, {C}) "
                         f"or equal ignore_index={ignore_index}")
