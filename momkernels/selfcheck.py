"""``python -m momkernels check``: every available backend against the reference.

Runs a fixed grid of cases (dtypes, class counts from 1 to 32003, every loss
and reduction, weights, label smoothing, ignored rows, both MoM
normalisations) on each device, compares loss values and input gradients with
the float64 reference (``testing.oracle``) under the check's tolerance
(``testing.err_over_tol``: what "correct" means is defined in testing.py, for
this command and for the test suite), prints one line per backend and device
and returns non-zero on any mismatch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch

from .backends import unavailable_reason
from .functional import mom_cross_entropy
from .testing import err_over_tol, oracle


@dataclass
class Result:
    backend: str
    device: str
    cases: int = 0
    max_err: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)


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
        want, want_grad = oracle(x, t, lam=lam, **kw)

        e_val = err_over_tol(got, want, dtype)
        # a row's gradient is (row coefficient) x (terms of size <= w): 1/N under mean
        w_max = float(weight.max()) if weight is not None else 1.0
        e_grad = err_over_tol(xk.grad, want_grad, dtype,
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
