"""``python -m momkernels check``: every available backend against the reference.

Runs a fixed grid of cases (dtypes, class counts from 1 to 32003, every loss
and reduction, weights, label smoothing, ignored rows, both MoM
normalisations) on each device, compares loss values and input gradients with
``reference.mom_cross_entropy(..., compute_dtype=torch.float64)``, prints one
line per backend and device and returns non-zero on any mismatch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import reference
from .backends import unavailable_reason
from .functional import mom_cross_entropy

# Relative tolerance per logits dtype.  Values and gradients pass when
#   |got - want| <= rtol * (|want| + scale) + atol
# with scale = max |want| of the tensor (so entries far below the largest are
# judged against the tensor's magnitude, as rounding to the dtype does) and
# atol = the dtype's smallest normal number (below it float16 is subnormal and
# holds only a few bits: the rounding of the output dtype, not of the kernel).
RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@dataclass
class Result:
    backend: str
    device: str
    cases: int = 0
    max_err: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)


def err_over_tol(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype,
                 min_scale: float = 0.0) -> float:
    """max |got - want| / tolerance (see RTOL); <= 1 passes.  NaN matches NaN.

    ``min_scale`` is the magnitude of the terms that cancel in ``want`` (a
    gradient that is exactly 0 in exact arithmetic, e.g. C = 1, is a few ulps
    of those terms in floating point).
    """
    got, want = got.detach().double(), want.detach().double()
    if want.numel() == 0:
        return 0.0
    finite = ~torch.isnan(want)
    scale = max(float(want[finite].abs().max()) if finite.any() else 0.0, min_scale)
    tol = RTOL[dtype] * (want.abs() + scale) + torch.finfo(dtype).tiny
    err = ((got - want).abs() / tol).masked_fill(torch.isnan(got) & torch.isnan(want), 0.0)
    return float(err.nan_to_num(nan=float("inf")).max())


def _cases(device: str, backend: str):
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    shapes = [(13, 1), (67, 2), (515, 9), (97, 37), (33, 1000), (5, 32003)]
    options = [
        dict(loss="ce"),
        dict(loss="ce", weight=True, label_smoothing=0.1),
        dict(loss="focal", gamma=2.0),
        dict(loss="dice", dice_alpha=1.0, mom_norm="rows"),
        dict(loss="focal", gamma=1.5, mom_norm=700.0),  # a number: the paper's sentences x M
    ]
    for dtype, (n, c), opt, red, lam in itertools.product(
            dtypes, shapes, options, ("mean", "sum", "none"), (0.175, 1.0)):
        if backend == "triton" and dtype == torch.float64:
            continue
        yield dtype, n, c, dict(opt), red, lam


def check_backend(backend: str, device: str, seed: int = 0) -> Result:
    res = Result(backend, device)
    g = torch.Generator().manual_seed(seed)
    for dtype, n, c, opt, red, lam in _cases(device, backend):
        x = (torch.randn(n, c, generator=g) * 3).to(dtype)
        t = torch.randint(0, c, (n,), generator=g)
        t[torch.rand(n, generator=g) < 0.6] = 0                # NER-like: most rows are O
        t[torch.rand(n, generator=g) < 0.25] = -100            # ignored sub-words / padding
        weight = torch.rand(c, generator=g) + 0.5 if opt.pop("weight", False) else None
        x, t = x.to(device), t.to(device)
        weight = weight.to(device) if weight is not None else None
        kw = dict(o_index=0, weight=weight, reduction=red, **opt)

        xk = x.clone().requires_grad_()
        got = mom_cross_entropy(xk, t, lam, backend=backend, **kw)
        (got.sum()).backward()
        xr = x.clone().double().requires_grad_()
        want = reference.mom_cross_entropy(xr, t, lam, compute_dtype=torch.float64, **kw)
        want.sum().backward()

        e_val = err_over_tol(got, want, dtype)
        # a row's gradient is (row coefficient) x (terms of size <= w): 1/N under mean
        w_max = float(weight.max()) if weight is not None else 1.0
        e_grad = err_over_tol(xk.grad, xr.grad, dtype,
                              min_scale=w_max / n if red == "mean" else w_max)
        key = str(dtype).replace("torch.", "")
        res.max_err[key] = max(res.max_err.get(key, 0.0), e_val, e_grad)
        res.cases += 1
        if e_val > 1 or e_grad > 1:
            res.failures.append(
                f"{backend}/{device} dtype={key} N={n} C={c} {opt} reduction={red} lam={lam}: "
                f"value error {e_val:.2f}x tolerance, gradient error {e_grad:.2f}x tolerance")
    return res


def run(devices: Optional[list[str]] = None, backends: Optional[list[str]] = None) -> int:
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failed = 0
    for device in devices:
        for backend in backends or ("cpp", "triton", "torch"):
            reason = unavailable_reason(backend, torch.device(device))
            if reason is not None:
                print(f"{backend:>7} on {device}: skipped ({reason.splitlines()[0]})")
                continue
            res = check_backend(backend, device)
            errs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(res.max_err.items()))
            status = "OK" if not res.failures else f"FAIL ({len(res.failures)} cases)"
            print(f"{backend:>7} on {device}: {res.cases} cases, max error/tolerance {errs}: {status}")
            for f in res.failures[:20]:
                print("    " + f)
            failed += len(res.failures)
    return 1 if failed else 0
