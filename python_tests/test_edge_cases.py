"""Ignored rows, all-ignored and empty batches, confident (p_y -> 1) rows in
bfloat16, saturated rows, infinite logits, and identities of docs/spec.md that do
not need the oracle (gamma = 0 focal is CE, lam = 1 is cross-entropy, MoM with
mom_norm="valid" is a per-row re-weighting).

The tests that take conftest.py's ``device`` run on CUDA tensors too on a GPU
machine (they replace test_cuda.py's copies of the same checks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import momkernels
from helpers import (BACKENDS, DTYPES, FUSED, FUSED_ALL_DEVICES, assert_close, backend_params, check_against_oracle,
                     coefficient_scale, grad_tol, make_logits, make_targets, make_weight, oracle,
                     oracle_floor, run_backend, value_tol)

LOSSES = ["ce", "focal", "dice"]


# ------------------------------------------------------------- ignored rows


@pytest.mark.parametrize("ignore_index", [-100, 3, 40])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [37, 1000])
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_ignored_rows_exactly_zero(backend, dtype, loss, ignore_index, C, device, gen):
    """reduction="none": ignored rows give exactly 0 loss and exactly 0 gradient
    rows (also with a non-zero upstream gradient on them), for every reduction.
    C = 37: the tile / small-C kernels of every backend; C = 1000 their row
    kernels (CPU C > 64, CUDA and Triton C > 128)."""
    N = 41
    x = make_logits((N, C), dtype, gen=gen, device=device)
    t = make_targets((N,), C, gen=gen, kind="random", ignore_index=ignore_index, ignore_frac=0.3,
                     device=device)
    ign = t == ignore_index
    assert 0 < int(ign.sum()) < N
    w = make_weight(C, dtype, gen=gen, device=device)
    kw = dict(lam=0.175, o_index=1, ignore_index=ignore_index, weight=w, loss=loss,
              backend=backend)
    out, grad = run_backend(x, t, torch.full((N,), 3.0, dtype=dtype, device=device),
                            reduction="none", **kw)
    assert bool((out[ign] == 0).all()), out[ign]
    assert bool((grad[ign] == 0).all())
    assert bool((out[~ign] != 0).any())  # and the others are really computed
    for reduction in ("mean", "sum"):
        _, grad = run_backend(x, t, reduction=reduction, **kw)
        assert bool((grad[ign] == 0).all()), reduction
        assert bool((grad[~ign] != 0).any()), reduction


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", backend_params())
def test_ignored_rows_with_minus_inf_logits(backend, loss, reduction):
    """An ignored row contributes nothing whatever its logits: -inf in class 0
    (masked vocabularies; also where an implementation might gather the
    ignored row's "target") must not leak a NaN gradient (0 * inf)."""
    x = torch.tensor([[-math.inf, 1.0, 2.0], [0.5, 1.0, 2.0], [-math.inf, -math.inf, 3.0]],
                     requires_grad=True)
    t = torch.tensor([-100, 1, -100])
    out = momkernels.mom_cross_entropy(x, t, 0.5, loss=loss, reduction=reduction, backend=backend)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert bool(torch.isfinite(out).all()), out
    assert bool((g[0] == 0).all()) and bool((g[2] == 0).all()), g
    # one valid row: D = 1 under "mean", so the row alone has the same gradient
    _, ref_g = oracle(x[1:2], t[1:2], lam=0.5, loss=loss, reduction=reduction)
    assert_close(g[1], ref_g[0], rtol=1e-5, atol=1e-7, name="valid row")


@pytest.mark.parametrize("lam", [0.0, 0.175, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [9, 1000])  # tile / small-C and row kernels
@pytest.mark.parametrize("backend", backend_params(devices=True))
def test_all_ignored_batch(backend, dtype, reduction, lam, C, device, gen):
    """Every row ignored: mean -> NaN (0/0, as PyTorch), sum -> 0, none -> zeros;
    gradients are exactly zero in every case."""
    N = 13
    x = make_logits((N, C), dtype, gen=gen, device=device)
    t = torch.full((N,), -100, device=device)
    out, grad = run_backend(x, t, backend=backend, lam=lam, o_index=0, reduction=reduction)
    assert out.dtype == dtype
    if reduction == "mean":
        assert torch.isnan(out), out
        if lam == 1.0:  # plain CE: like PyTorch
            assert torch.isnan(F.cross_entropy(x.detach().float(), t))
    elif reduction == "sum":
        assert out.item() == 0.0
    else:
        assert out.shape == (N,) and bool((out == 0).all())
    assert bool((grad == 0).all()), grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", backend_params())
def test_all_ignored_batch_rows_norm(backend, reduction, gen):
    """mom_norm="rows" divides the MoM term by the row count: with every row
    ignored the MoM term is 0/N = 0, the CE term 0/0."""
    x = make_logits((6, 5), torch.float32, gen=gen)
    t = torch.full((6,), -100)
    out = momkernels.mom_cross_entropy(x, t, 0.0, reduction=reduction, mom_norm="rows",
                                       backend=backend)
    if reduction == "none":
        assert bool((out == 0).all())
    else:
        assert out.item() == 0.0, out


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", backend_params(devices=True))
def test_empty_batch(backend, dtype, reduction, device):
    x = torch.empty(0, 7, dtype=dtype, device=device, requires_grad=True)
    t = torch.empty(0, dtype=torch.int64, device=device)
    out = momkernels.mom_cross_entropy(x, t, 0.5, reduction=reduction, backend=backend)
    ref = F.cross_entropy(x.detach().float(), t, reduction=reduction)
    assert out.dtype == dtype and out.shape == ref.shape
    if reduction == "mean":
        assert torch.isnan(out)
    elif reduction == "sum":
        assert out.item() == 0.0
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == (0, 7)


def test_lam0_without_o_rows_is_zero():
    """lam = 0 keeps only the MoM term: no o_index rows -> exactly 0 (mean too,
    D > 0), zero gradient."""
    for backend in BACKENDS:
        x = torch.randn(8, 5, requires_grad=True)
        t = torch.tensor([1, 2, 3, 4, 1, 2, -100, 3])
        for reduction in ("mean", "sum"):
            out = momkernels.mom_cross_entropy(x, t, 0.0, o_index=0, reduction=reduction,
                                               backend=backend)
            (g,) = torch.autograd.grad(out, x)
            assert out.item() == 0.0 and bool((g == 0).all()), (backend, reduction)


# ------------------------------------------------------------- confident rows


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("C", [9, 1000])  # tile / small-C and row kernels
@pytest.mark.parametrize("backend", FUSED_ALL_DEVICES)
def test_bf16_confident_majority_rows(backend, C, loss, reduction, device):
    """Confident O tokens (p_y = 1 - delta, delta = 1e-3 ... 1e-6) in bfloat16:
    the true-class gradient entry is ~ -(1 - p_y) -- computed as p_y - 1 it
    cancels in float32 -- and must match the float64 oracle (same bf16 logits,
    upcast) to about one bf16 ulp."""
    o_index = 0
    deltas = [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6]
    rows = []
    for d in deltas:
        margin = math.log((C - 1) * (1 - d) / d)  # others at 0: p_y = 1 - d
        r = torch.zeros(C, dtype=torch.float64)
        r[o_index] = margin
        rows.append(r)
    # a few ordinary entity rows in the batch too
    g = torch.Generator().manual_seed(7)
    n_ent = 3
    x64 = torch.cat([torch.stack(rows), torch.randn(n_ent, C, generator=g, dtype=torch.float64)])
    x = x64.to(torch.bfloat16).to(device).requires_grad_(True)
    t = torch.tensor([o_index] * len(deltas) + [1, 2, 3], device=device)
    kw = dict(lam=0.175, o_index=o_index, loss=loss, reduction=reduction)
    upstream = (torch.ones(len(t), dtype=torch.bfloat16, device=device) if reduction == "none"
                else None)
    out, grad = run_backend(x, t, upstream, backend=backend, **kw)
    ref_out, ref_grad = oracle(x, t, upstream, **kw)
    n = len(deltas)
    p_y = torch.softmax(x.detach().double(), -1)[:n, o_index]
    assert bool(((1 - p_y) > 5e-7).all() and ((1 - p_y) < 2e-3).all()), 1 - p_y
    true_cls = grad[torch.arange(n), o_index]
    ref_true = ref_grad[torch.arange(n), o_index]
    # non-vanishing reference (negative for ce/focal; positive for dice, whose
    # self-adjusting term pushes confident rows back)
    assert bool((ref_true != 0).all()), ref_true
    assert_close(true_cls, ref_true, rtol=2.0**-7, atol=0.0,
                 name=f"{loss} true-class gradient of confident rows (1-p_y={1 - p_y})")
    # and the whole gradient and the value to the usual bf16 tolerances
    rtol, atol = value_tol(torch.bfloat16)
    assert_close(out, ref_out, rtol=rtol, atol=atol, name="loss")
    grtol, gatol = grad_tol(torch.bfloat16, float(ref_grad.abs().max()))
    gatol += oracle_floor(torch.bfloat16, coefficient_scale(t, upstream=upstream, **kw))
    assert_close(grad, ref_grad, rtol=grtol, atol=gatol, name="grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", FUSED)
def test_confident_rows_full_precision(backend, dtype):
    """The same in float32/float64 with deltas down to 1e-12: the true-class
    gradient keeps its relative accuracy far below the dtype's epsilon."""
    C, o_index = 9, 0
    deltas = [1e-4, 1e-6, 1e-8, 1e-10, 1e-12]
    x64 = torch.zeros(len(deltas), C, dtype=torch.float64)
    for i, d in enumerate(deltas):
        x64[i, o_index] = math.log((C - 1) * (1 - d) / d)
    x = x64.to(dtype).requires_grad_(True)
    t = torch.full((len(deltas),), o_index)
    _, grad = run_backend(x, t, backend=backend, lam=0.175, o_index=o_index, reduction="sum")
    # O rows have coefficient lam + (1 - lam) = 1 under "sum": the true-class
    # gradient is p_y - 1 = -(sum_{j != y} e^{x_j - x_y}) / (1 + same), formed
    # here without cancellation (the float64 reference's autograd computes
    # p_y - 1 and is itself off by ~1e-16 / delta relative)
    xv = x.detach().double()
    r = torch.exp(xv - xv[:, o_index:o_index + 1])
    r[:, o_index] = 0
    rest = r.sum(1)
    exact = -rest / (1 + rest)
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    assert_close(grad[:, o_index], exact, rtol=rtol, atol=0.0, name="true-class gradient")


@pytest.mark.parametrize("C", [2, 9, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", FUSED)
def test_loss_value_relative_accuracy(backend, dtype, C):
    """Per-row CE loss log(sum_j e^{x_j - x_y}) = log1p(sum_{j != y} e^{x_j - x_y})
    to a few ulp relative, from confident rows (loss ~1e-12, where log of a
    sum that rounds to 1 would give 0) to wrong ones: the kernels' log
    normaliser (an inline log1p on the CPU) against that formula in float64."""
    g = torch.Generator().manual_seed(C)
    margins = torch.tensor([30.0, 25.0, 20.0, 15.0, 10.0, 5.0, 2.0, 0.5, 0.0, -3.0])
    x64 = torch.randn(len(margins) * 8, C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (x64.shape[0],), generator=g)
    rows = torch.arange(x64.shape[0])
    x64[rows, t] += margins.repeat(8).double()
    x = x64.to(dtype)
    out = momkernels.mom_cross_entropy(x, t, 1.0, reduction="none", backend=backend)
    xv = x.double()
    d = torch.exp(xv - xv[rows, t][:, None])
    d[rows, t] = 0
    exact = torch.log1p(d.sum(1))
    # float32: x_j - x_y itself rounds (|x_j - x_y| ~ 32 here: 1.9e-6 relative
    # in e^{x_j - x_y}), and the AVX2 / default kernels use a 20-ulp exp
    rtol = 4e-6 if dtype == torch.float32 else 4e-15
    assert_close(out.double(), exact, rtol=rtol, atol=0.0, name="per-row loss")


# ------------------------------------------------------------- saturated rows


@pytest.mark.parametrize("opts", [dict(loss="focal", gamma=0.5), dict(loss="focal", gamma=0.0),
                                  dict(loss="dice", dice_alpha=0.5), dict(loss="dice"),
                                  dict(loss="ce", label_smoothing=0.2)],
                         ids=["focal_g0.5", "focal_g0", "dice_a0.5", "dice", "ce_ls"])
@pytest.mark.parametrize("backend", backend_params())
def test_single_class_is_constant(backend, opts):
    """C = 1: p_y = 1 for every row, so the loss is a constant of the logits
    (0, or the dice constant 1 - (2a+d)/(a+1+d) at a = 0): its gradient is
    exactly 0 -- also for gamma / dice_alpha < 1, where (1 - p)^gamma has an
    infinite derivative at p = 1 that must not leak out as 0 * inf = NaN."""
    x = (torch.randn(5, 1) * 3).requires_grad_(True)
    t = torch.zeros(5, dtype=torch.int64)
    # label smoothing's gradient is (eps/C)(W p_j - w_j) + ..., a difference of
    # two float32 terms: zero up to their rounding; the others are exactly 0
    bound = 1e-6 if "label_smoothing" in opts else 0.0
    for reduction in ("mean", "sum", "none"):
        out = momkernels.mom_cross_entropy(x, t, 0.175, reduction=reduction, backend=backend,
                                           **opts)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert bool(torch.isfinite(out).all()), (reduction, out)
        assert bool((g.abs() <= bound).all()), (reduction, g)


@pytest.mark.parametrize("opts", [dict(loss="focal", gamma=0.5), dict(loss="dice", dice_alpha=0.5)],
                         ids=["focal_g0.5", "dice_a0.5"])
@pytest.mark.parametrize("backend", backend_params())
def test_saturated_rows_have_finite_gradient(backend, opts):
    """A row whose p_y rounds to exactly 1 in float32 (margin 200): its
    gradient is ~0, never NaN, and the other rows' gradients are unaffected."""
    x = torch.randn(4, 6)
    x[0, 2] = 200.0
    x.requires_grad_(True)
    t = torch.tensor([2, 1, 0, 3])
    out = momkernels.mom_cross_entropy(x, t, 0.5, o_index=2, backend=backend, **opts)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out)
    assert bool(torch.isfinite(g).all()), g
    assert float(g[0].abs().max()) < 1e-30
    _, ref_grad = oracle(x[1:], t[1:], lam=0.5, o_index=2, **opts)
    # rows 1..3 alone have another mean denominator (3 instead of 4 valid rows)
    assert_close(g[1:] * 4 / 3, ref_grad, rtol=1e-5, atol=1e-6, name="other rows")


# ------------------------------------------------------------- infinities


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("C,masked", [(40, slice(20, None)), (5000, slice(0, 4500)),
                                      (5000, slice(2048, 4096))],
                         ids=["tile", "row_mostly_masked", "row_masked_chunk"])
@pytest.mark.parametrize("backend", backend_params())
def test_minus_inf_logits_like_pytorch(backend, C, masked, dtype):
    """-inf logits on non-target classes (masked vocabularies) are fine: finite
    loss, zero gradient there, as F.cross_entropy -- also when a whole chunk of
    a long row is -inf."""
    g0 = torch.Generator().manual_seed(C)
    x = torch.randn(6, C, dtype=dtype, generator=g0)
    x[:, masked] = -math.inf
    x.requires_grad_(True)
    free = [j for j in range(C) if x[0, j] > -math.inf]
    t = torch.tensor([free[0], free[5], free[-1], -100, free[3], free[7]])
    out = momkernels.cross_entropy(x, t, backend=backend)
    ref = F.cross_entropy(x.double(), t)
    (g,) = torch.autograd.grad(out, x)
    (rg,) = torch.autograd.grad(ref, x)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(out, ref, rtol=rtol, atol=0, name="loss")
    assert_close(g, rg, rtol=rtol, atol=rtol * 1e-3, name="grad")
    assert bool((g[:, masked] == 0).all())
    for loss in ("focal", "dice"):
        out = momkernels.mom_cross_entropy(x, t, 0.3, loss=loss, reduction="none",
                                           backend=backend)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(g).all()), loss
        assert bool((g[:, masked] == 0).all()), loss


@pytest.mark.parametrize("backend", backend_params())
def test_minus_inf_target_logit_gives_inf(backend):
    """The target class at -inf: the CE loss is +inf, as in PyTorch."""
    x = torch.randn(3, 5, dtype=torch.float64)
    x[1, 2] = -math.inf
    t = torch.tensor([0, 2, 4])
    for reduction in ("mean", "sum"):
        out = momkernels.cross_entropy(x, t, reduction=reduction, backend=backend)
        assert out.item() == math.inf, (reduction, out)
    out = momkernels.cross_entropy(x, t, reduction="none", backend=backend)
    ref = F.cross_entropy(x, t, reduction="none")
    assert_close(out, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backend_params())
def test_large_logits(backend, dtype, gen):
    """Logits near the dtype's range (max subtraction must come first)."""
    # exp(x) overflows float32 far below these unless the row max comes off
    # first; per-row losses (up to 2 * big) still fit the output dtype
    big = 1e4 if dtype == torch.float16 else 1e30
    x = make_logits((9, 7), dtype, gen=gen, scale=1.0)
    with torch.no_grad():
        x.mul_(big / 4).clamp_(-big, big)
    t = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, -100])
    out = momkernels.mom_cross_entropy(x, t, 0.5, reduction="none", backend=backend)
    assert bool(torch.isfinite(out).all()), out
    check_against_oracle(x, t, backend=backend, lam=0.5, reduction="sum")


# -------------------------------------------------------- docs/spec.md identities


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", backend_params())
def test_focal_gamma0_is_ce(backend, reduction, gen):
    x = make_logits((33, 9), torch.float64, gen=gen)
    t = make_targets((33,), 9, gen=gen)
    w = make_weight(9, torch.float64, gen=gen)
    a, ga = run_backend(x, t, None if reduction != "none" else torch.ones(33, dtype=x.dtype),
                        backend=backend, lam=0.3, weight=w, loss="focal", gamma=0.0,
                        reduction=reduction)
    b, gb = run_backend(x, t, None if reduction != "none" else torch.ones(33, dtype=x.dtype),
                        backend=backend, lam=0.3, weight=w, loss="ce", reduction=reduction)
    assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert_close(ga, gb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", backend_params())
def test_mom_is_row_reweighting_of_f_cross_entropy(backend, gen):
    """docs/spec.md written out with F.cross_entropy only (independent of reference.py):
    mean + mom_norm="valid" is sum_i c_i w_{y_i} l_i / D with c_i = 1 on O rows
    and lam elsewhere; mom_norm="rows" divides the O part by N, a number K by
    K; sum is
    sum_i c_i l_i; none is c_i l_i."""
    N, C, o, lam = 57, 9, 4, 0.175
    x = make_logits((N, C), torch.float64, gen=gen).detach()
    t = make_targets((N,), C, gen=gen, kind="ner", o_index=o)
    w = make_weight(C, torch.float64, gen=gen)
    ell = F.cross_entropy(x, t, weight=w, reduction="none", label_smoothing=0.1)
    valid = t != -100
    is_o = valid & (t == o)
    c = torch.where(is_o, torch.tensor(1.0, dtype=x.dtype), torch.tensor(lam, dtype=x.dtype))
    D = w[t[valid]].sum()
    kw = dict(o_index=o, weight=w, label_smoothing=0.1, backend=backend)
    got = momkernels.mom_cross_entropy(x, t, lam, **kw)
    assert_close(got, (c * ell).sum() / D, rtol=1e-12, atol=0, name="mean/valid")
    got = momkernels.mom_cross_entropy(x, t, lam, mom_norm="rows", **kw)
    want = lam * ell.sum() / D + (1 - lam) * ell[is_o].sum() / N
    assert_close(got, want, rtol=1e-12, atol=0, name="mean/rows")
    # a number: the paper's sentences x M (3 sentences padded to M = 128)
    for K in (3 * 128, 384.0, 0.75):
        got = momkernels.mom_cross_entropy(x, t, lam, mom_norm=K, **kw)
        want = lam * ell.sum() / D + (1 - lam) * ell[is_o].sum() / K
        assert_close(got, want, rtol=1e-12, atol=0, name=f"mean/{K}")
    got = momkernels.mom_cross_entropy(x, t, lam, reduction="sum", **kw)
    assert_close(got, (c * ell).sum(), rtol=1e-12, atol=0, name="sum")
    got = momkernels.mom_cross_entropy(x, t, lam, reduction="none", **kw)
    assert_close(got, c * ell, rtol=1e-12, atol=1e-300, name="none")


@pytest.mark.parametrize("backend", backend_params())
def test_focal_and_dice_from_spec_formulas(backend, gen):
    """focal and dice per-row values straight from docs/spec.md's table, in float64."""
    N, C = 31, 6
    x = make_logits((N, C), torch.float64, gen=gen).detach()
    t = make_targets((N,), C, gen=gen, kind="none_ignored")
    w = make_weight(C, torch.float64, gen=gen)
    p = torch.softmax(x, -1).gather(1, t[:, None])[:, 0]
    wy = w[t]
    g, al, de = 1.7, 0.6, 0.3
    focal = wy * (-(1 - p) ** g * torch.log(p))
    a = (1 - p) ** al * p
    dice = wy * (1 - (2 * a + de) / (a + 1 + de))
    got = momkernels.mom_cross_entropy(x, t, 1.0, weight=w, loss="focal", gamma=g,
                                       reduction="none", backend=backend)
    assert_close(got, focal, rtol=1e-10, atol=1e-14, name="focal")
    got = momkernels.mom_cross_entropy(x, t, 1.0, weight=w, loss="dice", dice_alpha=al,
                                       dice_smooth=de, reduction="none", backend=backend)
    assert_close(got, dice, rtol=1e-10, atol=1e-14, name="dice")


@pytest.mark.parametrize("backend", backend_params())
def test_weight_dtype_may_differ(backend, gen):
    """weight in float64 / float32 for bf16 logits gives the same result as the
    same values in bf16 (weights are used in the math dtype)."""
    x = make_logits((17, 9), torch.bfloat16, gen=gen)
    t = make_targets((17,), 9, gen=gen)
    w = make_weight(9, torch.bfloat16, gen=gen)
    base = momkernels.mom_cross_entropy(x, t, 0.3, weight=w, backend=backend)
    for wd in (torch.float32, torch.float64):
        other = momkernels.mom_cross_entropy(x, t, 0.3, weight=w.to(wd), backend=backend)
        assert_close(other, base, rtol=2.0**-8, atol=0, name=str(wd))


def test_auto_backend_is_correct(gen):
    x = make_logits((33, 9), torch.float32, gen=gen)
    t = make_targets((33,), 9, gen=gen, kind="ner", o_index=0)
    check_against_oracle(x, t, backend="auto", lam=0.175, o_index=0, loss="focal")


def test_available_backends():
    names = momkernels.available_backends()
    assert "torch" in names
    assert set(names) <= {"triton", "cpp", "torch"}
    assert set(momkernels.available_backends("cpu")) <= set(names)
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    for b in momkernels.available_backends("cpu"):
        assert torch.isfinite(momkernels.mom_cross_entropy(x, t, backend=b))
