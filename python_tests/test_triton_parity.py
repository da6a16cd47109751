"""The Triton backend is a port of the C++ row math (csrc/mom_loss.h: row_loss,
log_normaliser, reduce_loss); this file checks the port against the original
and both against the float64 reference (momkernels/reference.py), row by row
over a grid of log p_y, from confidently wrong rows (log p_y = -30) to
saturated ones (p_y = 1 in float32), for every loss and option family.

* ``test_row_math_parity``: one batch whose rows realise the grid's log p_y
  (each once with the target the majority class o_index and once another
  class, plus an ignored row) through the public API: loss values and
  gradients of backend "cpp" and backend "triton" against the float64 oracle
  with momkernels.testing's tolerances (helpers.check_against_oracle), for
  every reduction and two lams, in the Triton tile regime (C = 5) and its row
  regime (C = 130; C > 64 is also the C++ row path, C <= 64 its tile path).
* ``test_operator_contracts_agree``: the forward operators of the two backends
  (torch.ops.momkernels.mom_loss_fwd and triton_mom_loss_fwd, arguments from
  the same LossOptions.op_args()) return the same three outputs: the loss,
  stats (N, 2) = per-row (max, log-normaliser) and coef (2,) = (a, b), with
  row i's coefficient a + b [y_i == o_index], in float32.

Without a GPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1,
set by conftest.py before triton is imported): sizes are small.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from helpers import (HAS_CPP, assert_close, check_against_oracle,  # noqa: E402
                     value_tol)
from momkernels import backends  # noqa: E402
from momkernels.options import LossOptions  # noqa: E402

mt = pytest.importorskip("momkernels.triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
if mt.unavailable_reason(DEV) is not None:
    pytest.skip(f"Triton backend unavailable: {mt.unavailable_reason(DEV)}",
                allow_module_level=True)
if not HAS_CPP or backends.unavailable_reason("cpp", torch.device(DEV)) is not None:
    pytest.skip("the C++ kernels are not built for this device (or not under test): nothing to "
                "compare the Triton port with", allow_module_level=True)

# log p_y of the rows: confidently wrong (-30, -10), wrong, unsure, right,
# confident (q = 1 - p_y = 1e-3, 1e-6: focal/dice terms in q^gamma, q^alpha
# and lp / q -> -1) and saturated (0: p_y = 1 in float32, the log1p / expm1 path)
LOG_P = [-30.0, -10.0, -3.0, -1.0, -0.1, -1e-3, -1e-6, 0.0]
O_INDEX = 0
OTHER = 2  # the target of the non-majority copy of each row
IGNORE = -100

# loss, options: every loss and option family of docs/spec.md §4
LOSSES = {
    "ce": ("ce", {}),
    "ce_ls0.1": ("ce", {"label_smoothing": 0.1}),
    "ce_ls0.1_w": ("ce", {"label_smoothing": 0.1, "weighted": True}),
    "focal_g0": ("focal", {"gamma": 0.0}),
    "focal_g0.5": ("focal", {"gamma": 0.5}),
    "focal_g2": ("focal", {"gamma": 2.0}),
    "focal_g5": ("focal", {"gamma": 5.0}),
    "dice": ("dice", {}),
    "dice_a0.5_s1": ("dice", {"dice_alpha": 0.5, "dice_smooth": 1.0}),
    "dice_a2_s0.5": ("dice", {"dice_alpha": 2.0, "dice_smooth": 0.5}),
}
# C = 5: Triton's tile regime (C <= 128), the C++ tile path (C <= 64, fused on CPU);
# C = 130: Triton's row regime (one row per program), the C++ row path (C > 64)
CLASSES = [5, 130]


def rows_with_log_p(C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(2 len(LOG_P) + 1, C) float32 logits and targets: row 2k has target
    O_INDEX, row 2k + 1 target OTHER, both with log p_y = LOG_P[k] (the target
    logit z, the others 0: log p_y = z - log(e^z + C - 1)); the last row is
    ignored."""
    xs, ts = [], []
    for lp in LOG_P:
        if lp == 0.0:
            z = 120.0  # (C - 1) e^-120 underflows float32: log p_y = 0 exactly there
        else:
            z = lp + math.log(C - 1) - math.log(-math.expm1(lp))
        for y in (O_INDEX, OTHER):
            row = torch.zeros(C, dtype=torch.float64)
            row[y] = z
            xs.append(row)
            ts.append(y)
    xs.append(torch.linspace(-2, 2, C, dtype=torch.float64))
    ts.append(IGNORE)
    return torch.stack(xs).to(torch.float32), torch.tensor(ts)


def test_rows_realise_the_grid():
    """The construction does what it says: log_softmax of each row (float64) at
    its target is the grid's log p_y (to float32 rounding of the logits)."""
    for C in CLASSES:
        x, t = rows_with_log_p(C)
        lp = torch.log_softmax(x.double(), 1)[torch.arange(len(t) - 1), t[:-1]]
        want = torch.tensor(LOG_P, dtype=torch.float64).repeat_interleave(2)
        assert_close(lp, want, rtol=1e-5, atol=1e-6, name=f"log p_y, C={C}")


def _options(loss_cfg: str, C: int) -> tuple[dict, torch.Tensor | None]:
    loss, extra = LOSSES[loss_cfg]
    extra = dict(extra)
    w = None
    if extra.pop("weighted", False):
        w = torch.linspace(0.25, 2.0, C, dtype=torch.float32)
    return dict(loss=loss, **extra), w


# every reduction with lam = 0.3 (both terms); lam = 0 (the MoM term alone, the
# zero-coefficient rule) with the two mean normalisations, where it matters
RED_LAM = [(("mean", "valid"), 0.3), (("mean", "rows"), 0.3), (("sum", "valid"), 0.3),
           (("none", "valid"), 0.3), (("mean", "valid"), 0.0), (("mean", "rows"), 0.0)]


@pytest.mark.parametrize("red,lam", RED_LAM, ids=lambda v: "-".join(v) if isinstance(v, tuple)
                         else f"lam{v}")
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("loss_cfg", list(LOSSES))
def test_row_math_parity(loss_cfg, C, red, lam):
    x, t = rows_with_log_p(C)
    kw, w = _options(loss_cfg, C)
    reduction, mom_norm = red
    upstream = None
    if reduction == "none":  # a different upstream gradient per row
        upstream = torch.linspace(0.5, 1.5, len(t), dtype=torch.float32).to(DEV)
    x, t = x.to(DEV), t.to(DEV)
    w = None if w is None else w.to(DEV)
    for backend in ("cpp", "triton"):
        leaf = x.clone().requires_grad_(True)
        check_against_oracle(leaf, t, upstream=upstream, backend=backend,
                             name=f"{backend} {loss_cfg} C={C} lam={lam} {reduction}/{mom_norm}",
                             lam=lam, o_index=O_INDEX, ignore_index=IGNORE, weight=w,
                             reduction=reduction, mom_norm=mom_norm, **kw)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("loss_cfg", ["ce", "ce_ls0.1_w", "focal_g2", "dice_a2_s0.5"])
def test_operator_contracts_agree(loss_cfg, C, reduction):
    """Same outputs, shapes, dtypes and meaning from the C++ and the Triton
    forward operator (called as the backends call them)."""
    x, t = rows_with_log_p(C)
    x, t = x.to(DEV), t.to(DEV)
    kw, w = _options(loss_cfg, C)
    w = None if w is None else w.to(DEV)
    opts = LossOptions(lam=0.3, o_index=O_INDEX, ignore_index=IGNORE, reduction=reduction,
                       backend="cpp", **kw)
    cpp = torch.ops.momkernels.mom_loss_fwd(x, t, w, *opts.op_args())
    tri = torch.ops.momkernels.triton_mom_loss_fwd(x, t, w, *opts.op_args(), False)
    rtol, atol = value_tol(torch.float32)
    for name, a, b in zip(("loss", "stats", "coef"), cpp, tri):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype,
                                                           b.dtype)
        assert_close(b, a, rtol=rtol, atol=atol, name=f"triton vs cpp {name}")
    # coef's meaning: (a, b) of spec.md §5 for this batch
    coef = cpp[2].double().cpu()
    lam = 0.3
    if reduction == "mean":
        valid = t != IGNORE
        D = float((w[t[valid]] if w is not None else valid[valid].double()).double().sum())
        want = torch.tensor([lam / D, (1 - lam) / D], dtype=torch.float64)
    else:
        want = torch.tensor([lam, 1 - lam], dtype=torch.float64)
    assert_close(coef, want, rtol=rtol, atol=0.0, name="coef = (a, b)")
