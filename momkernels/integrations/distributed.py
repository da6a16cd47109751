"""MoM / cross-entropy loss with a *global* mean under DistributedDataParallel.

Why: ``reduction="mean"`` divides by the number of valid tokens on *this* rank
(D_r).  DDP then averages the gradients of the R ranks, so the effective loss is
(1/R) * sum_r S_r / D_r, where S_r is the rank's summed loss.  When ranks hold
different numbers of valid tokens (always, with padding, -100 sub-words and
uneven sentences), that is not the loss of the global batch, S / D with
S = sum_r S_r, D = sum_r D_r: tokens on a rank with few tokens weigh more.

:func:`global_mean_mom_cross_entropy` returns, on each rank,

    loss_r = S_r * R / D

so that DDP's gradient average gives (1/R) * sum_r grad(S_r) * R / D =
grad(S) / D -- exactly the single-process gradient of the mean loss over the
concatenated global batch.  D is the number of valid tokens (``target !=
ignore_index``, compared exactly: ``rows.valid_denominator``), or sum_i w_{y_i}
when class weights are given (PyTorch's
weighted-mean denominator, see docs/spec.md), summed over ranks with one
``all_reduce`` of a detached local count.  (For ``mom_norm="valid"`` the MoM
mean is sum-reduction / D, so this is the same formula for every ``loss=``.)

Cost: one all_reduce of a scalar per call, i.e. one host synchronisation with
the other ranks (the collective waits for them).  DDP synchronises at every
backward anyway, so this adds no real stall, but unlike ``mom_cross_entropy``
itself this function is not free of device->host syncs under CUDA graphs.

The value returned on a rank is *not* the global loss (it is S_r * R / D); for
logging the global mean, all_reduce ``loss.detach()`` and divide by R.

The paper's normalisation (a MoM term over a second denominator, D_MoM) works
the same way: loss_r = R * (lam * S_V,r / D + (1 - lam) * S_O,r / D_MoM), with
S_V,r / S_O,r the rank's summed loss over its valid / O rows, D all-reduced as
above and D_MoM the *global* MoM denominator: ``mom_norm=<number>`` is taken
as global (e.g. global sentences x M, which the caller knows: the sentences
of the global batch), ``mom_norm="rows"`` all-reduces the rows with D (one
collective for both).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..functional import mom_cross_entropy
from ..options import check_mom_norm
from ..rows import valid_denominator, valid_rows

__all__ = ["global_denominator", "global_mean_mom_cross_entropy", "world_size"]


def world_size(group=None) -> int:
    """Number of ranks in ``group`` (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def global_denominator(target: Tensor, weight: Optional[Tensor] = None, *,
                       ignore_index: int = -100, group=None, with_rows: bool = False) -> Tensor:
    """D = global number of valid targets (or sum of w_y with class weights),
    all-reduced (SUM) over ``group``.  Returned detached, float32 (float64 if
    ``weight`` is float64), on ``target``'s device.  ``with_rows=True``
    returns (D, global number of rows) from the same all_reduce."""
    d = valid_denominator(target, weight, ignore_index).clone()
    if with_rows:
        d = torch.stack([d, torch.full_like(d, target.numel())])
    if world_size(group) > 1:
        dist.all_reduce(d, op=dist.ReduceOp.SUM, group=group)
    return d


def global_mean_mom_cross_entropy(input: Tensor, target: Tensor, lam: float = 0.5, *,
                                  o_index: int = 0, ignore_index: int = -100,
                                  weight: Optional[Tensor] = None, group=None,
                                  mom_norm="valid", **kwargs) -> Tensor:
    """``mom_cross_entropy(..., reduction="mean")`` over the *global* batch of all
    ranks, scaled for DDP's gradient averaging (see the module docstring):
    returns ``sum-reduced loss * world_size / D_global``.

    With one process (or no process group) this equals
    ``mom_cross_entropy(..., reduction="mean")``.  ``lam=1`` gives the global
    mean cross-entropy / focal / dice loss.  ``mom_norm``: ``"valid"``,
    ``"rows"`` (all rows of all ranks) or a number, the *global* D_MoM (for
    the paper's normalisation: sentences of the global batch x M).
    Other keyword arguments (``loss``, ``gamma``, ``backend``, ...) are passed on.
    """
    check_mom_norm(mom_norm)
    if kwargs.get("reduction", "mean") != "mean":
        raise ValueError("global_mean_mom_cross_entropy: reduction is always the global mean; "
                         f"got reduction={kwargs['reduction']!r}")
    kwargs.pop("reduction", None)
    R = world_size(group)
    if mom_norm == "valid":
        s = mom_cross_entropy(input, target, lam, o_index=o_index, ignore_index=ignore_index,
                              weight=weight, reduction="sum", mom_norm="valid", **kwargs)
        d = global_denominator(target, weight, ignore_index=ignore_index, group=group)
        return s * (R / d).to(s.dtype)
    # two denominators: the per-row losses (lam = 1, 'none': w_y-weighted l_i,
    # 0 on ignored rows), summed over all valid rows and over the O rows
    ell = mom_cross_entropy(input, target, 1.0, o_index=o_index, ignore_index=ignore_index,
                            weight=weight, reduction="none", **kwargs).reshape(-1)
    t = target.reshape(-1)
    if mom_norm == "rows":
        d, d_mom = global_denominator(target, weight, ignore_index=ignore_index, group=group,
                                      with_rows=True).unbind()
    else:
        d = global_denominator(target, weight, ignore_index=ignore_index, group=group)
        d_mom = float(mom_norm)
    # as the kernels: a term whose coefficient is exactly 0 is left out
    out = None
    if lam != 0.0:
        out = ell.sum() * (lam * R / d).to(ell.dtype)
    if lam != 1.0:
        s_o = torch.where(valid_rows(t, ignore_index) & (t == o_index), ell,
                          torch.zeros_like(ell)).sum()
        term = s_o * ((1.0 - lam) * R / d_mom if isinstance(d_mom, float)
                      else ((1.0 - lam) * R / d_mom).to(ell.dtype))
        out = term if out is None else out + term
    return out
