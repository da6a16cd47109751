"""Shared pieces of the momkernels test suite: backends under test, per-dtype
tolerances, a comparison that says where and by how much values differ, and
input builders (logits in several memory layouts, NER-like targets).

Tolerances (see ``value_tol`` / ``grad_tol``).  Every backend does its math in
float32 (float64 for float64 logits) and rounds the result once to the logits'
dtype, while the oracle is ``reference.mom_cross_entropy(...,
compute_dtype=torch.float64)`` of the *same* (already rounded) logits.  So:

* float64: only summation order differs -> 1e-11 relative;
* float32: float32 math, ~100 ulps -> 1e-5 relative (the issue's figure);
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
  log_softmax returns log p_y = 0 once 1 - p_y < 1e-16, where the kernels'
  log1p/expm1 stay exact), and float32 math cannot do better than ~1e-7 of
  the row's scale for saturated rows;
plus the smallest normal number of the math dtype (float16: its subnormal
spacing) below which relative accuracy is gone.  The accuracy of confident
rows *relative to their own size* is tested separately
(test_edge_cases.py::test_bf16_confident_majority_rows).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import pytest
import torch

import momkernels
from momkernels import reference

# --------------------------------------------------------------- backends

# Backends that can run on CPU tensors here (a backend with only GPU kernels
# is left out; "triton" joins under TRITON_INTERPRET=1, which conftest.py sets
# when there is no GPU).  MOMKERNELS_TEST_BACKENDS=cpp,torch picks a subset.
_CPU_BACKENDS = [b for b in momkernels.available_backends("cpu")
                 if b in ("cpp", "torch", "triton")]
_REQUESTED = os.environ.get("MOMKERNELS_TEST_BACKENDS", "")
if _REQUESTED.strip():
    _wanted = [b.strip() for b in _REQUESTED.split(",") if b.strip()]
    _missing = [b for b in _wanted if b not in _CPU_BACKENDS]
    if _missing:
        raise RuntimeError(f"MOMKERNELS_TEST_BACKENDS asks for {_missing}, not available on "
                           f"CPU here (available: {_CPU_BACKENDS})")
    BACKENDS = _wanted
else:
    BACKENDS = _CPU_BACKENDS
HAS_CPP = "cpp" in BACKENDS
# Backends that run interpreted here (Triton's interpreter: ~100x slower).
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set()


# Backends with fused kernels.  "torch" is PyTorch autograd of log_softmax,
# which forms p_y - 1 by subtraction exactly as F.cross_entropy does; accuracy
# beyond PyTorch's own (confident rows) is the fused kernels' promise only.
FUSED = [b for b in BACKENDS if b != "torch"]


def backend_params(heavy: bool = False) -> list:
    """BACKENDS for ``parametrize``; in the big grids (``heavy``) an interpreted
    backend is marked ``slow`` so the default run stays within minutes."""
    return [pytest.param(b, marks=pytest.mark.slow) if heavy and b in INTERPRETED else b
            for b in BACKENDS]


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LOW_PRECISION = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------- tolerances


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


def coefficient_scale(t: torch.Tensor, *, lam: float = 0.5, o_index: int = 0,
                      ignore_index: int = -100, weight: Optional[torch.Tensor] = None,
                      reduction: str = "mean", mom_norm="valid",
                      upstream: Optional[torch.Tensor] = None, **_) -> float:
    """Largest factor d(result)/d(l_i) * max_c w_c over the rows: the scale of
    the gradient entries *before* any cancellation or saturation (|d l_i / d x|
    is O(1) per unit weight for every loss here)."""
    t = t.reshape(-1)
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
            c = c * upstream.detach().double().reshape(-1).abs()
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
    the row's coefficient -- also in the float64 oracle, whose log_softmax
    returns log p_y = 0 once 1 - p_y < 1e-16 (the kernels' log1p/expm1 keep
    it).  Below this, an elementwise comparison measures the oracle."""
    math_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return (16 if dtype == torch.float64 else 4) * math_eps * coef_scale


# --------------------------------------------------------------- comparison


def _fmt_index(flat: int, shape) -> tuple[int, ...]:
    if len(shape) == 0:
        return ()
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape)))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float,
                 name: str = "value", equal_nan: bool = True) -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise, NaN where NaN,
    equal infinities; on failure report max abs/rel error and where they are."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return
    a_nan, e_nan = torch.isnan(a), torch.isnan(e)
    if not equal_nan:
        assert not bool(a_nan.any() | e_nan.any()), f"{name}: NaN found (actual {a}, expected {e})"
    nan_mismatch = a_nan != e_nan
    if bool(nan_mismatch.any()):
        i = int(nan_mismatch.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: NaN pattern differs at {_fmt_index(i, a.shape)}: actual "
            f"{a.reshape(-1)[i].item()!r}, expected {e.reshape(-1)[i].item()!r} "
            f"({int(nan_mismatch.sum())} of {a.numel()} elements)")
    finite = ~(a_nan | e_nan)
    a_inf, e_inf = torch.isinf(a) & finite, torch.isinf(e) & finite
    inf_mismatch = (a_inf | e_inf) & (a != e)
    if bool(inf_mismatch.any()):
        i = int(inf_mismatch.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: infinity differs at {_fmt_index(i, a.shape)}: actual "
            f"{a.reshape(-1)[i].item()!r}, expected {e.reshape(-1)[i].item()!r}")
    ok = finite & ~(a_inf | e_inf)
    diff = torch.where(ok, (a - e).abs(), torch.zeros_like(a))
    bound = atol + rtol * e.abs()
    bad = ok & (diff > bound)
    if bool(bad.any()):
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


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, name: str = "value"):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{name}: {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}")
    same = (actual == expected) | (torch.isnan(actual) & torch.isnan(expected))
    if not bool(same.all()):
        i = int((~same).reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: not bitwise identical at {_fmt_index(i, actual.shape)}: "
            f"{actual.reshape(-1)[i].item()!r} vs {expected.reshape(-1)[i].item()!r} "
            f"({int((~same).sum())} elements differ)")


# --------------------------------------------------------------- inputs


def make_logits(shape, dtype, *, gen: torch.Generator, scale: float = 3.0,
                layout: str = "contig") -> torch.Tensor:
    """Logits of ``shape`` (as F.cross_entropy's input) in a memory layout:

    2-D ``(N, C)``: contig | transposed ((C, N) storage) | colslice (every
    other column of (N, 2C)) | rowslice (every other row of (2N, C)) | expand
    (one row broadcast to N rows, stride 0);
    1-D ``(C,)``: contig | colslice (every other element);
    N-D ``(N, C, d...)``: contig | transposed (classes last in memory) |
    colslice (every other class) | rowslice (every other sample).
    The values are rounded to ``dtype`` once; the returned tensor is a leaf that
    requires grad.
    """
    shape = tuple(shape)

    def rnd(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)

    nd = len(shape)
    if layout == "contig" or (nd == 1 and layout not in ("colslice",)):
        base = rnd(*shape)
        x = base
    elif layout == "colslice":
        cdim = 0 if nd == 1 else 1
        big = list(shape)
        big[cdim] *= 2
        base = rnd(*big)
        x = base[(slice(None),) * cdim + (slice(None, None, 2),)]
    elif layout == "transposed":
        if nd == 2:
            base = rnd(shape[1], shape[0])
            x = base.t()
        else:  # (N, d..., C) storage, viewed as (N, C, d...)
            perm_shape = (shape[0],) + shape[2:] + (shape[1],)
            base = rnd(*perm_shape)
            x = base.movedim(-1, 1)
    elif layout == "rowslice":
        base = rnd(2 * shape[0], *shape[1:])
        x = base[::2]
    elif layout == "expand":
        if nd == 2:
            base = rnd(1, shape[1])
            x = base.expand(shape[0], shape[1])
        else:  # broadcast the sample dim
            base = rnd(1, *shape[1:])
            x = base.expand(*shape)
    else:
        raise ValueError(layout)
    assert tuple(x.shape) == shape, (x.shape, shape)
    # a leaf with the requested strides: detach() keeps the view's strides
    return x.detach().requires_grad_(True)


def make_targets(tshape, C: int, *, gen: torch.Generator, kind: str = "random",
                 o_index: int = 0, ignore_index: int = -100, ignore_frac: float = 0.3,
                 dtype: torch.dtype = torch.int64, strided: bool = False) -> torch.Tensor:
    """Class-index targets: ``random`` (uniform over classes, ``ignore_frac`` of
    them ``ignore_index``), ``ner`` (80 % ``o_index``, 10 % ignored, the rest
    uniform) or ``none_ignored``.  ``strided``: a non-contiguous view (every other element of a
    larger tensor)."""
    tshape = tuple(tshape)
    n = math.prod(tshape)
    cls = torch.randint(0, C, (n,), generator=gen)
    # exact fractions at random positions: u is a random permutation of
    # (0.5 + k) / n, so "u < f" selects round(f * n) rows
    u = (torch.randperm(n, generator=gen).to(torch.float64) + 0.5) / max(n, 1)
    if kind == "random":
        t = torch.where(u < ignore_frac, torch.full_like(cls, ignore_index), cls)
    elif kind == "ner":
        t = torch.where(u < 0.8, torch.full_like(cls, o_index), cls)
        t = torch.where((u >= 0.8) & (u < 0.9), torch.full_like(cls, ignore_index), t)
    elif kind == "none_ignored":
        t = cls
    else:
        raise ValueError(kind)
    t = t.to(dtype).reshape(tshape)
    if strided:
        big = torch.stack([t, torch.full_like(t, 12345)], dim=-1)  # garbage in between
        t = big[..., 0]
        assert not t.is_contiguous() or t.numel() <= 1
    return t


def make_weight(C: int, dtype: torch.dtype, *, gen: torch.Generator) -> torch.Tensor:
    """Random positive class weights in [0.25, 2.25), rounded to ``dtype``."""
    return (torch.rand(C, generator=gen, dtype=torch.float64) * 2 + 0.25).to(dtype)


def target_shape(input_shape) -> tuple[int, ...]:
    input_shape = tuple(input_shape)
    if len(input_shape) == 1:
        return ()
    return (input_shape[0],) + input_shape[2:]


def num_classes(input_shape) -> int:
    input_shape = tuple(input_shape)
    return input_shape[0] if len(input_shape) == 1 else input_shape[1]


# --------------------------------------------------------------- oracle


def oracle(x: torch.Tensor, t: torch.Tensor, upstream: Optional[torch.Tensor] = None, **kw):
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


def run_backend(x: torch.Tensor, t: torch.Tensor, upstream: Optional[torch.Tensor] = None, **kw):
    """(loss, grad) of momkernels.mom_cross_entropy on ``x`` (a leaf)."""
    lam = kw.pop("lam", 0.5)
    out = momkernels.mom_cross_entropy(x, t, lam, **kw)
    g = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


def check_against_oracle(x, t, *, upstream=None, backend, name="", **kw):
    """Values and gradients of ``backend`` against the float64 oracle."""
    out, grad = run_backend(x, t, upstream, backend=backend, **dict(kw))
    ref_out, ref_grad = oracle(x, t, upstream, **dict(kw))
    assert out.dtype == x.dtype, f"loss dtype {out.dtype} != input dtype {x.dtype}"
    assert grad.dtype == x.dtype and grad.shape == x.shape, (grad.dtype, grad.shape)
    rtol, atol = value_tol(x.dtype)
    assert_close(out, ref_out, rtol=rtol, atol=atol, name=f"{name} loss")
    finite = ref_grad[ref_grad.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    grtol, gatol = grad_tol(x.dtype, scale)
    gatol += oracle_floor(x.dtype, coefficient_scale(t, upstream=upstream, **kw))
    assert_close(grad, ref_grad, rtol=grtol, atol=gatol, name=f"{name} grad")
    return out, grad
