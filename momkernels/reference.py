"""The PyTorch reference of docs/spec.md: readable, differentiable, compile-friendly.

It is the oracle of every test and the ``"torch"`` backend (backends.py passes
it the validated options as keywords).  It follows docs/spec.md line by line
and does no argument checking of its own (``options.LossOptions`` does that
once for every backend).  The row helpers it shares with the rest of the
package (``as_rows``, ``valid_rows``, ...) are in ``rows.py``.

Per-row loss l_i for a valid row (ignored rows: 0), p = softmax(x_i):

    ce     (1 - eps) * w_y * (-log p_y) + (eps / C) * sum_c w_c * (-log p_c)
    focal  w_y * (-(1 - p_y)^gamma * log p_y)
    dice   w_y * (1 - (2a + delta) / (a + 1 + delta)),  a = (1 - p_y)^alpha * p_y

Reduction, with V the valid rows, O those whose target is ``o_index`` and
D = sum_{i in V} w_{y_i}:

    mean   lam * sum_V l / D + (1 - lam) * sum_O l / D_MoM   (D_MoM = D or N rows)
    sum    lam * sum_V l + (1 - lam) * sum_O l
    none   (lam + (1 - lam) * [y_i == o_index]) * l_i
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .rows import as_rows, math_dtype, valid_rows

__all__ = ["mom_cross_entropy", "cross_entropy", "per_row_loss"]


def _pow_q(q: Tensor, e: float) -> Tensor:
    """q ** e for q = 1 - p_y in [0, 1], with the kernels' finite derivative.

    Plain ``q ** e`` back-propagates e * q^(e-1), which is inf at q = 0 for
    e < 1 (and inf * 0 = NaN), and overflows for a float32 *subnormal* q (a
    confident row, target margin ~88-103) when e < 1.  The true gradient of
    every loss here carries a factor q from dq/dx and stays finite, which is
    what the kernels compute (csrc/mom_loss.h): so q = 0 gives the constant
    q^e (0, or 1 for e = 0), and a subnormal q the value q^e with the
    derivative e * tiny^(e-1), its base clamped to the smallest normal number
    as in the kernels (docs/SEMANTICS.md S9).
    """
    tiny = torch.finfo(q.dtype).tiny
    one = torch.ones_like(q)
    normal = q >= tiny
    q_normal = torch.where(normal, q, one)
    sub = (q > 0) & ~normal
    q_sub = torch.where(sub, q, one)
    # value q_sub^e; derivative the clamped one (q_sub - q_sub.detach() is 0)
    clamped = q_sub.detach() ** e + (e * tiny ** (e - 1.0)) * (q_sub - q_sub.detach())
    at_zero = torch.full_like(q, 1.0 if e == 0 else 0.0)
    return torch.where(normal, q_normal**e, torch.where(sub, clamped, at_zero))


def _log_p_confident(x: Tensor, t: Tensor, lp_y: Tensor) -> Tensor:
    """log p_y of (rows, C) logits ``x``, exact also where p_y -> 1.

    ``lp_y`` is log_softmax's log p_y = (x_y - m) - log(sum_c exp(x_c - m)).
    Where y is the row's largest logit, that sum is 1 + r with
    r = sum_{c != y} exp(x_c - x_y), and forming 1 + r rounds away every part
    of r below the dtype's epsilon: in float32 a row with r < 6e-8 gets
    log p_y = 0, so q = 1 - p_y = -expm1(log p_y) = 0 although q ~ r is the
    whole focal / dice loss of that confident row (and q^alpha, alpha < 1,
    turns the lost bits into large errors).  There this returns
    log p_y = -log1p(r) instead, as the kernels compute it (log_normaliser in
    csrc/mom_loss.h); r <= C - 1 cannot overflow, and its gradient with
    respect to x_y, r / (1 + r) = 1 - p_y, is a sum of positive terms rather
    than 1 - p_y by subtraction.

    Other rows keep ``lp_y``: their p_y <= 1/2 (no cancellation), and a row
    with a non-finite largest logit keeps log_softmax's NaN (docs/SEMANTICS.md).
    """
    x_y = x.gather(1, t.unsqueeze(1))
    top = (x_y.squeeze(1) >= x.amax(-1)) & torch.isfinite(x_y.squeeze(1))
    # the other rows compute on zeros: finite, so the branch that torch.where
    # does not take gets a zero gradient, never 0 * inf = NaN
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    d = torch.where(top.unsqueeze(1), x - x_y, zero)
    others = torch.arange(x.shape[-1], device=x.device) != t.unsqueeze(1)
    r = torch.where(others, d.exp(), zero).sum(-1)
    return torch.where(top, -torch.log1p(r), lp_y)


def per_row_loss(
    x: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    weight: Optional[Tensor] = None,
    loss: str = "ce",
    gamma: float = 2.0,
    dice_alpha: float = 1.0,
    dice_smooth: float = 0.01,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row loss l_i of (rows, C) logits already in the math dtype.

    Returns (l, w_y, valid): l is 0 on ignored rows, w_y is the class weight of
    each row's target (0 on ignored rows), valid the boolean mask of valid rows.
    """
    C = x.shape[-1]
    valid = valid_rows(target, ignore_index)
    # A valid target outside [0, C) (docs/spec.md: a NaN row, never an out-of-bounds
    # access; on CUDA an out-of-bounds gather is a device-side assert that kills
    # the context) indexes class 0 and gets a NaN loss and gradient row below.
    bad = valid & ((target < 0) | (target >= C))
    safe_t = torch.where(valid & ~bad, target, torch.zeros_like(target)).long()
    # Ignored rows are computed on zero logits: a NaN or +inf logit in an
    # ignored row would otherwise come back as a NaN gradient through
    # log_softmax's backward (g - exp(out) * sum(g) with g = 0, out = NaN),
    # where docs/spec.md gives ignored rows an exactly zero gradient.
    x = torch.where(valid.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    logp = torch.log_softmax(x, dim=-1)
    # Ignored rows use lp = 0 (p = 1): their loss is masked to 0 below, and this
    # keeps e.g. focal's (1 - p)^g * lp at a -inf logit from back-propagating
    # 0 * inf = NaN into a row that must get an exactly zero gradient.
    lp_y = logp.gather(1, safe_t.unsqueeze(1)).squeeze(1)
    if loss != "ce":
        # focal and dice are functions of q = 1 - p_y, which log_softmax loses
        # for confident rows; cross-entropy keeps log_softmax, as F.cross_entropy
        lp_y = _log_p_confident(x, safe_t, lp_y)
    lp_y = torch.where(valid, lp_y, torch.zeros_like(lp_y))
    if weight is not None:
        w = weight.to(x.dtype)
        w_y = w[safe_t]
    else:
        w = None
        w_y = torch.ones_like(lp_y)

    if loss == "ce":
        ell = w_y * -lp_y
        if label_smoothing > 0:
            smooth = -(logp * w).sum(-1) if w is not None else -logp.sum(-1)
            ell = (1.0 - label_smoothing) * ell + (label_smoothing / C) * smooth
    else:
        p = lp_y.exp()
        q = -torch.expm1(lp_y)  # 1 - p, never formed by subtraction (see _log_p_confident)
        if loss == "focal":
            ell = w_y * (-_pow_q(q, gamma) * lp_y)
        elif loss == "dice":
            a = _pow_q(q, dice_alpha) * p
            ell = w_y * (1.0 - (2.0 * a + dice_smooth) / (a + 1.0 + dice_smooth))
        else:
            raise ValueError(f"loss must be 'ce', 'focal' or 'dice'; got {loss!r}")

    zero = torch.zeros_like(ell)
    # NaN, and a NaN gradient row through log_softmax (the factor is 0 on the
    # other rows: their gradient through this branch is 0 * 0, not 0 * NaN)
    nan_bad = torch.where(bad, float("nan"), 0.0).to(x.dtype)
    ell = torch.where(bad, lp_y * nan_bad, ell)
    return torch.where(valid, ell, zero), torch.where(valid & ~bad, w_y, zero), valid


def mom_cross_entropy(
    input: Tensor,
    target: Tensor,
    lam: float = 0.5,
    *,
    o_index: Optional[int] = 0,
    ignore_index: int = -100,
    weight: Optional[Tensor] = None,
    loss: str = "ce",
    gamma: float = 2.0,
    dice_alpha: float = 1.0,
    dice_smooth: float = 0.01,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    mom_norm="valid",
    compute_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """docs/spec.md's MoM loss, written for clarity.

    ``compute_dtype`` overrides the math dtype (float32, or float64 for float64
    input); tests pass ``torch.float64`` to get an oracle more precise than any
    kernel.  The result has ``input``'s dtype, or ``compute_dtype`` when given.
    """
    out_dtype = compute_dtype or input.dtype
    acc_dtype = compute_dtype or math_dtype(input.dtype)
    target_shape = target.shape
    x, t = as_rows(input, target)
    ell, w_y, valid = per_row_loss(
        x.to(acc_dtype),
        t,
        ignore_index=ignore_index,
        weight=weight,
        loss=loss,
        gamma=gamma,
        dice_alpha=dice_alpha,
        dice_smooth=dice_smooth,
        label_smoothing=label_smoothing,
    )
    # o_index None: plain cross-entropy, no majority class (lam is then 1)
    is_o = valid & (t == o_index) if o_index is not None else torch.zeros_like(valid)

    if reduction == "none":
        coef = lam + (1.0 - lam) * is_o.to(acc_dtype)
        return (coef * ell).reshape(target_shape).to(out_dtype)

    # A term whose coefficient is exactly zero is left out rather than
    # multiplied by 0, so lam = 1 is exactly plain cross-entropy even for an
    # inf loss, and so is lam = 0 the pure MoM term.
    s_valid = ell.sum()
    s_o = torch.where(is_o, ell, torch.zeros_like(ell)).sum()
    if reduction == "sum":
        terms = []
        if lam != 0:
            terms.append(lam * s_valid)
        if lam != 1:
            terms.append((1.0 - lam) * s_o)
    elif reduction == "mean":
        denom = w_y.sum()
        if mom_norm == "valid":
            d_mom = denom
        elif mom_norm == "rows":
            d_mom = torch.full_like(denom, float(t.numel()))
        elif not isinstance(mom_norm, str):  # a number: the caller's D_MoM
            d_mom = torch.full_like(denom, float(mom_norm))
        else:
            raise ValueError(f"mom_norm must be 'valid', 'rows' or a number; got {mom_norm!r}")
        terms = []
        if lam != 0:
            terms.append(lam * s_valid / denom)
        if lam != 1:
            terms.append((1.0 - lam) * s_o / d_mom)
    else:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return out.to(out_dtype)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    compute_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Plain softmax cross-entropy: the MoM loss with lam = 1 (no O class)."""
    return mom_cross_entropy(
        input,
        target,
        1.0,
        o_index=None,
        ignore_index=ignore_index,
        weight=weight,
        label_smoothing=label_smoothing,
        reduction=reduction,
        compute_dtype=compute_dtype,
    )
