"""What "correct within tolerance" means: the one definition used by
``python -m momkernels check`` (selfcheck.py) and by the test suite
(python_tests/helpers.py re-exports it).

The oracle is ``reference.mom_cross_entropy(..., compute_dtype=torch.float64)``
of the *same* (already rounded) logits (``oracle``).  Every backend does its
math in float32 (float64 for float64 logits) and rounds the result once to the
logits' dtype.  A value passes when

    |actual - expected| <= atol + rtol * |expected|          (``compare``)

elementwise, a NaN only where the oracle has one, an infinity only where the
oracle has the same one.  Two sets of (rtol, atol) use that rule:

The test suite (``value_tol``, ``grad_tol``, ``oracle_floor``), elementwise:

* float64: only summation order differs -> 1e-11 relative;
* float32: float32 math, ~100 ulps -> 1e-5 relative;
* bfloat16 / float16: the float32 result rounded once to the output dtype ->
  one ulp of that dtype (2^-7 resp. 2^-10 relative; observed errors are at
  most half of that), and 1e-6 absolute for float32 math near zero.

  Gradients get two absolute floors on top (``grad_tol`` + ``oracle_floor``):

  * normwise, relative to the largest oracle gradient entry (float64/float32
    ``rtol * max|grad|``, low precision ``1e-5 * max|grad|``, i.e. float32
    math), for entries that are differences of nearly equal terms: label
    smoothing's P * p_j - S * w_j, and dice's d a / d p = q - p near p = 1/2,
    whose *elementwise* relative error is unbounded in any finite precision;
  * the math dtype's epsilon times the row coefficient (``coefficient_scale``):
    the float64 oracle itself only knows p_y - 1 to ~1e-16 absolute (its
    autograd forms it by subtraction; for cross-entropy its log_softmax also
    returns log p_y = 0 once 1 - p_y < 1e-16, where the kernels' log1p/expm1
    stay exact), and float32 math cannot do
    better than ~1e-7 of the row's scale for saturated rows;

  plus the smallest normal number of the math dtype (float16: its subnormal
  spacing) below which relative accuracy is gone.  The accuracy of confident
  rows *relative to their own size* is tested separately
  (test_edge_cases.py::test_bf16_confident_majority_rows,
  test_regressions.py::test_confident_focal_and_dice_rows_fp32).

The check (``CHECK_RTOL``, ``err_over_tol``), normwise: rtol per logits
dtype, and atol = rtol * (max |expected| of the tensor) + the dtype's smallest
normal number, so entries far below the largest are judged against the
tensor's magnitude, as rounding to the dtype does (below the smallest normal
number float16 is subnormal and holds only a few bits: the rounding of the
output dtype, not of the kernel).  It reports error / tolerance, <= 1 passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import reference

__all__ = ["compare", "assert_close", "assert_bitwise_equal", "eps_of", "value_tol",
           "grad_tol", "coefficient_scale", "oracle_floor", "CHECK_RTOL", "err_over_tol",
           "oracle"]


# --------------------------------------------------------------- the rule


@dataclass
class Comparison:
    """``compare``'s verdict, elementwise, on float64 CPU copies of the tensors."""

    actual: Tensor
    expected: Tensor
    nan_mismatch: Tensor   # NaN in one of the two only
    inf_mismatch: Tensor   # an infinity in one, not the same one in the other
    ok: Tensor             # both finite: judged by diff <= bound
    diff: Tensor           # |actual - expected| where ok, else 0
    bound: Tensor          # atol + rtol * |expected|
    bad: Tensor            # ok and diff > bound

    def passed(self) -> bool:
        return not bool((self.nan_mismatch | self.inf_mismatch | self.bad).any())


def compare(actual: Tensor, expected: Tensor, *, rtol: float, atol: float) -> Comparison:
    """|actual - expected| <= atol + rtol * |expected| elementwise, NaN where
    NaN, equal infinities (the module docstring)."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    a_nan, e_nan = torch.isnan(a), torch.isnan(e)
    finite = ~(a_nan | e_nan)
    a_inf, e_inf = torch.isinf(a) & finite, torch.isinf(e) & finite
    ok = finite & ~(a_inf | e_inf)
    diff = torch.where(ok, (a - e).abs(), torch.zeros_like(a))
    bound = atol + rtol * e.abs()
    return Comparison(a, e, a_nan != e_nan, (a_inf | e_inf) & (a != e), ok, diff, bound,
                      ok & (diff > bound))


def _fmt_index(flat: int, shape) -> tuple[int, ...]:
    if len(shape) == 0:
        return ()
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape)))


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float, atol: float,
                 name: str = "value", equal_nan: bool = True) -> None:
    """``compare``, raising AssertionError that reports the max abs/rel error
    and where they are."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    c = compare(actual, expected, rtol=rtol, atol=atol)
    a, e = c.actual, c.expected
    if not equal_nan:
        assert not bool(torch.isnan(a).any() | torch.isnan(e).any()), (
            f"{name}: NaN found (actual {a}, expected {e})")
    if bool(c.nan_mismatch.any()):
        i = int(c.nan_mismatch.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: NaN pattern differs at {_fmt_index(i, a.shape)}: actual "
            f"{a.reshape(-1)[i].item()!r}, expected {e.reshape(-1)[i].item()!r} "
            f"({int(c.nan_mismatch.sum())} of {a.numel()} elements)")
    if bool(c.inf_mismatch.any()):
        i = int(c.inf_mismatch.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: infinity differs at {_fmt_index(i, a.shape)}: actual "
            f"{a.reshape(-1)[i].item()!r}, expected {e.reshape(-1)[i].item()!r}")
    if bool(c.bad.any()):
        diff, bound, ok, bad = c.diff, c.bound, c.ok, c.bad
        rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        worst = int(torch.where(bad, diff - bound, torch.full_like(diff, -1.0)).reshape(-1).argmax())
        i_abs = int(diff.reshape(-1).argmax())
        i_rel = int(torch.where(ok, rel, torch.zeros_like(rel)).reshape(-1).argmax())
        flat_a, flat_e = a.reshape(-1), e.reshape(-1)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} elements differ beyond "
            f"rtol={rtol:.3g} atol={atol:.3g}\n"
            f"  worst at {_fmt_index(worst, a.shape)}: actual {flat_a[worst].item()!r} "
            f"expected {flat_e[worst].item()!r}\n"
            f"  max abs error {diff.reshape(-1)[i_abs].item():.4g} at {_fmt_index(i_abs, a.shape)}; "
            f"max rel error {rel.reshape(-1)[i_rel].item():.4g} at {_fmt_index(i_rel, a.shape)}")


def assert_bitwise_equal(actual: Tensor, expected: Tensor, name: str = "value") -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{name}: {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}")
    same = (actual == expected) | (torch.isnan(actual) & torch.isnan(expected))
    if not bool(same.all()):
        i = int((~same).reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: not bitwise identical at {_fmt_index(i, actual.shape)}: "
            f"{actual.reshape(-1)[i].item()!r} vs {expected.reshape(-1)[i].item()!r} "
            f"({int((~same).sum())} elements differ)")


# --------------------------------------------------------------- the test suite's tolerances


def eps_of(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def value_tol(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for a loss value in ``dtype`` against the float64 oracle."""
    if dtype == torch.float64:
        return 1e-11, 1e-13
    if dtype == torch.float32:
        return 1e-5, 1e-6
    # one ulp of the output dtype (rounding of a float32 result), and an
    # absolute floor for float32 math on values near zero / fp16 subnormals
    return eps_of(dtype), 1e-6


def grad_tol(dtype: torch.dtype, scale: float) -> tuple[float, float]:
    """(rtol, atol) for gradient entries; ``scale`` = max |oracle gradient|."""
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    # below the smallest normal number of the math dtype (float32 for all but
    # float64), or float16's subnormal spacing, relative accuracy is gone
    if dtype == torch.float64:
        return 1e-11, 1e-11 * scale + torch.finfo(torch.float64).tiny
    under = 2.0**-24 if dtype == torch.float16 else torch.finfo(torch.float32).tiny
    if dtype == torch.float32:
        return 1e-5, 1e-5 * scale + under
    return eps_of(dtype), 1e-5 * scale + under


def backend_factor(backend: str, dtype: torch.dtype) -> float:
    """How much wider than the kernels' tolerances a backend's are: 10 for the
    "torch" backend on float32 logits, 1 otherwise.  That backend is reference.py
    run in the logits' dtype, i.e. ATen's float32 log_softmax, whose sums over
    tens of thousands of classes are off by more than the ~100 ulps the kernels
    meet (2.6e-5 relative on one gradient entry at C = 32000); it is PyTorch's
    numerics, not a kernel under test.  (The CUDA tests applied the same factor
    before the grids were shared by every device.)"""
    return 10.0 if backend == "torch" and dtype == torch.float32 else 1.0


def coefficient_scale(t: Tensor, *, lam: float = 0.5, o_index: int = 0,
                      ignore_index: int = -100, weight: Optional[Tensor] = None,
                      reduction: str = "mean", mom_norm="valid",
                      upstream: Optional[Tensor] = None, **_) -> float:
    """Largest factor d(result)/d(l_i) * max_c w_c over the rows: the scale of
    the gradient entries *before* any cancellation or saturation (|d l_i / d x|
    is O(1) per unit weight for every loss here).  Computed on the CPU, for
    tensors on any device."""
    t = t.reshape(-1).cpu()
    valid = t != ignore_index
    if not bool(valid.any()):
        return 0.0
    is_o = valid & (t == o_index)
    safe = torch.where(valid, t, torch.zeros_like(t)).long()
    w = (torch.ones(int(safe.max()) + 1, dtype=torch.float64) if weight is None
         else weight.detach().double().cpu())
    w_y = torch.where(valid, w[safe], torch.zeros(()).double())
    c = lam + (1 - lam) * is_o.double()
    if reduction == "none":
        if upstream is not None:
            c = c * upstream.detach().double().cpu().reshape(-1).abs()
    elif reduction == "mean":
        D = float(w_y.sum())
        D_mom = (D if mom_norm == "valid" else float(t.numel()) if mom_norm == "rows"
                 else float(mom_norm))
        c = (lam / D) + (1 - lam) * is_o.double() / D_mom if D > 0 else c * 0
    c = torch.where(valid, c, torch.zeros_like(c))
    return float(c.abs().max()) * float(w.abs().max())


def oracle_floor(dtype: torch.dtype, coef_scale: float) -> float:
    """Absolute accuracy limit of a gradient entry relative to the row scale:
    terms like p_y - 1 or q - p are only known to ~eps of the math dtype times
    the row's coefficient -- also in the float64 oracle, whose autograd forms
    p_y - 1 by subtraction (and whose cross-entropy log_softmax returns
    log p_y = 0 once 1 - p_y < 1e-16, where the kernels' log1p/expm1 keep it).
    Below this, an elementwise comparison measures the oracle."""
    math_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return (16 if dtype == torch.float64 else 4) * math_eps * coef_scale


# --------------------------------------------------------------- the check's tolerance

# rtol per logits dtype of ``python -m momkernels check`` (normwise, see the module docstring)
CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2,
              torch.float16: 4e-3}


def err_over_tol(got: Tensor, want: Tensor, dtype: torch.dtype, min_scale: float = 0.0) -> float:
    """max |got - want| / tolerance of the check (CHECK_RTOL); <= 1 passes.
    NaN matches NaN; any other NaN or infinity mismatch is inf.

    ``min_scale`` is the magnitude of the terms that cancel in ``want`` (a
    gradient that is exactly 0 in exact arithmetic, e.g. C = 1, is a few ulps
    of those terms in floating point).
    """
    if want.numel() == 0:
        return 0.0
    w = want.detach().double()
    finite = ~torch.isnan(w)
    scale = max(float(w[finite].abs().max()) if finite.any() else 0.0, min_scale)
    rtol = CHECK_RTOL[dtype]
    c = compare(got, want, rtol=rtol, atol=rtol * scale + torch.finfo(dtype).tiny)
    if bool((c.nan_mismatch | c.inf_mismatch).any()):
        return math.inf
    return float(torch.where(c.ok, c.diff / c.bound, torch.zeros_like(c.diff)).max())


# --------------------------------------------------------------- the oracle


def oracle(x: Tensor, t: Tensor, upstream: Optional[Tensor] = None, **kw):
    """(loss, grad) of the float64 reference on ``x``'s values (upcast).

    ``upstream`` is the gradient of the loss (same shape as the loss); default 1.
    ``kw`` are mom_cross_entropy's keyword arguments (lam included)."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    w = kw.pop("weight", None)
    lam = kw.pop("lam", 0.5)
    out = reference.mom_cross_entropy(
        x64, t, lam, weight=None if w is None else w.to(torch.float64),
        compute_dtype=torch.float64, **kw)
    g = torch.ones_like(out) if upstream is None else upstream.to(torch.float64)
    (grad,) = torch.autograd.grad(out, x64, g, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x64)
    return out.detach(), grad
