"""docs/SEMANTICS.md, item by item: what every backend returns where PyTorch is
silent (or where momkernels deliberately differs from it).  Each test names
the section (S1 ...) of docs/SEMANTICS.md it checks; every test runs on every
backend available here (Triton under the interpreter, at tiny sizes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import momkernels
from helpers import BACKENDS, assert_close, backend_params, make_logits, make_weight, oracle

LOSSES = ["ce", "focal", "dice"]
nan, inf = math.nan, math.inf


def fwd_bwd(x, t, backend, lam=0.5, upstream=None, **kw):
    """(loss, d loss / d x) with upstream gradient ``upstream`` (default ones)."""
    leaf = x.detach().clone().requires_grad_(True)
    out = momkernels.mom_cross_entropy(leaf, t, lam, backend=backend, **kw)
    g = torch.ones_like(out) if upstream is None else upstream
    (grad,) = torch.autograd.grad(out, leaf, g)
    return out.detach(), grad


def _rows():
    return torch.tensor([[0.5, 1.0, 2.0, -0.5], [0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.0, 2.0],
                         [0.0, 0.3, -0.2, 0.1]])


# ------------------------------------------------- S1 non-finite logits, valid rows


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("where", ["target", "other"])
@pytest.mark.parametrize("value", [nan, inf], ids=["nan", "+inf"])
@pytest.mark.parametrize("backend", backend_params())
def test_s1_nan_or_plus_inf_in_a_valid_row(backend, value, where, loss):
    """S1: NaN or +inf anywhere in a valid row (O row or entity row): that row's
    loss and its whole gradient row are NaN; the other rows are untouched; the
    reduced loss is NaN (as F.cross_entropy for "ce")."""
    t = torch.tensor([0, 1, 2, -100])
    for bad_row in (0, 1):  # an O row (o_index 0) and an entity row
        x = _rows()
        x[bad_row, t[bad_row] if where == "target" else 3] = value
        out, g = fwd_bwd(x, t, backend, lam=0.3, loss=loss, reduction="none")
        ref_out, ref_g = oracle(x, t, lam=0.3, loss=loss, reduction="none")
        assert math.isnan(out[bad_row]), out
        assert bool(torch.isnan(g[bad_row]).all()), g
        ok = [i for i in range(4) if i != bad_row]
        assert_close(out[ok], ref_out[ok], rtol=1e-5, atol=1e-6, name="other rows' loss")
        assert_close(g[ok], ref_g[ok], rtol=1e-5, atol=1e-6, name="other rows' gradient")
        assert bool((g[3] == 0).all())  # the ignored row
        for reduction in ("mean", "sum"):
            out, g = fwd_bwd(x, t, backend, lam=0.3, loss=loss, reduction=reduction)
            assert math.isnan(out), (reduction, out)
            assert bool(torch.isnan(g[bad_row]).all()) and bool(torch.isfinite(g[ok]).all())
        if loss == "ce":
            want = F.cross_entropy(x, t, reduction="none")
            assert math.isnan(want[bad_row])


@pytest.mark.parametrize("backend", backend_params())
def test_s1_minus_inf_target_logit(backend):
    """S1: the target logit at -inf (p_y = 0): ce +inf with the finite gradient
    (p - onehot) of F.cross_entropy; focal +inf with a NaN gradient row; dice
    the constant w_y / (1 + delta) with a zero gradient row."""
    t = torch.tensor([0, 1, 2, -100])
    x = _rows()
    x[1, 1] = -inf
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    out, g = fwd_bwd(x, t, backend, lam=1.0, weight=w, reduction="none")
    xr = x.clone().requires_grad_(True)
    ref = F.cross_entropy(xr, t, weight=w, reduction="none")
    (rg,) = torch.autograd.grad(ref.sum(), xr)
    assert out[1] == inf
    assert_close(out, ref, rtol=1e-5, atol=1e-6, name="ce")
    assert_close(g, rg, rtol=1e-5, atol=1e-6, name="ce grad")
    out, g = fwd_bwd(x, t, backend, lam=1.0, weight=w, loss="focal", reduction="none")
    assert out[1] == inf and bool(torch.isnan(g[1]).all()), (out, g)
    assert bool(torch.isfinite(g[[0, 2, 3]]).all())
    out, g = fwd_bwd(x, t, backend, lam=1.0, weight=w, loss="dice", dice_smooth=0.25,
                     reduction="none")
    assert_close(out[1], torch.tensor(2.0 / 1.25), rtol=1e-6, atol=0, name="dice at p = 0")
    assert bool((g[1] == 0).all()), g


# ------------------------------------------------- S2 non-finite logits, ignored rows


@pytest.mark.parametrize("opts", [dict(loss="ce"), dict(loss="ce", label_smoothing=0.1),
                                  dict(loss="focal"), dict(loss="dice")],
                         ids=["ce", "ce_ls", "focal", "dice"])
@pytest.mark.parametrize("value", [nan, inf, -inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("backend", backend_params())
def test_s2_non_finite_logits_in_ignored_rows(backend, value, opts):
    """S2: an ignored row contributes exactly 0 to the loss and gets an exactly
    zero gradient whatever its logits -- NaN and +inf included, where
    F.cross_entropy's gradient is NaN for that row (its value is 0 too)."""
    t = torch.tensor([-100, 1, 0, -100])
    x = _rows()
    x[0, 1] = value
    x[3] = value
    for reduction in ("none", "mean", "sum"):
        out, g = fwd_bwd(x, t, backend, lam=0.3, reduction=reduction, **opts)
        assert bool(torch.isfinite(out).all()), (reduction, out)
        assert bool((g[[0, 3]] == 0).all()), (reduction, g)
        ref_out, ref_g = oracle(x[1:3], t[1:3], lam=0.3, reduction=reduction, **opts)
        if reduction == "none":
            assert bool((out[[0, 3]] == 0).all())
            out = out[1:3]
        assert_close(out, ref_out, rtol=1e-5, atol=1e-6, name="loss of the valid rows")
        assert_close(g[1:3], ref_g, rtol=1e-5, atol=1e-6, name="gradient of the valid rows")
    if opts["loss"] == "ce" and value != -inf:
        # PyTorch: value 0, but a NaN gradient row (log_softmax's backward
        # g - exp(out) * sum(g) with g = 0 and out = NaN)
        xr = x.clone().requires_grad_(True)
        ref = F.cross_entropy(xr, t, reduction="none",
                              label_smoothing=opts.get("label_smoothing", 0.0))
        (rg,) = torch.autograd.grad(ref.sum(), xr)
        assert ref[0] == 0 and bool(torch.isnan(rg[0]).all())


# ------------------------------------------------- S3 all rows ignored


@pytest.mark.parametrize("mom_norm", ["valid", "rows", 40.0])
@pytest.mark.parametrize("backend", backend_params())
def test_s3_all_rows_ignored(backend, mom_norm, gen):
    """S3: every row ignored.  mean: lam * 0/0 + (1 - lam) * 0/D_MoM -> NaN
    unless lam = 0 with mom_norm="rows" or a number (0/N = 0); sum 0; none zeros; the
    gradient is exactly zero in every case."""
    x = make_logits((5, 6), torch.float32, gen=gen)
    t = torch.full((5,), -100)
    for lam in (0.0, 0.5, 1.0):
        out, g = fwd_bwd(x, t, backend, lam=lam, reduction="mean", mom_norm=mom_norm)
        if lam == 0.0 and mom_norm != "valid":
            assert out.item() == 0.0, out
        else:
            assert math.isnan(out), (lam, out)
        assert bool((g == 0).all())
        out, g = fwd_bwd(x, t, backend, lam=lam, reduction="sum", mom_norm=mom_norm)
        assert out.item() == 0.0 and bool((g == 0).all())
        out, g = fwd_bwd(x, t, backend, lam=lam, reduction="none", mom_norm=mom_norm)
        assert out.shape == (5,) and bool((out == 0).all()) and bool((g == 0).all())


# ------------------------------------------------- S4 empty input


@pytest.mark.parametrize("shape,tshape", [((0, 7), (0,)), ((3, 7, 0), (3, 0)),
                                          ((0, 7, 2, 2), (0, 2, 2))],
                         ids=["N0", "d1_0", "N0_2d"])
@pytest.mark.parametrize("backend", backend_params())
def test_s4_empty_input(backend, shape, tshape):
    """S4: no rows at all: mean NaN for every lam with mom_norm "valid" or
    "rows" (0/0, as F.cross_entropy) and with a number K for lam > 0 (0/K = 0
    for lam = 0), sum 0, none an empty tensor of the target's shape; the
    gradient is an empty tensor of the input's shape; dtype kept."""
    x = torch.empty(shape, dtype=torch.bfloat16)
    t = torch.empty(tshape, dtype=torch.int64)
    for lam in (0.0, 0.5, 1.0):
        for mom_norm in ("valid", "rows", 256):
            out, g = fwd_bwd(x, t, backend, lam=lam, reduction="mean", mom_norm=mom_norm)
            assert out.dtype == x.dtype and out.shape == (), out
            if lam == 0.0 and mom_norm == 256:
                assert out.item() == 0.0, out
            else:
                assert math.isnan(out), out
            assert g.shape == x.shape
            out, g = fwd_bwd(x, t, backend, lam=lam, reduction="sum", mom_norm=mom_norm)
            assert out.item() == 0.0
            out, g = fwd_bwd(x, t, backend, lam=lam, reduction="none", mom_norm=mom_norm)
            assert out.shape == tshape and g.shape == x.shape
    ref = F.cross_entropy(x.float(), t)
    assert math.isnan(ref)


# ------------------------------------------------- S5 no (valid) O rows


@pytest.mark.parametrize("backend", backend_params())
def test_s5_no_valid_o_rows(backend, gen):
    """S5: no valid row has the target o_index (none at all, or all of them
    ignored): the MoM term is exactly 0 (its numerator is an empty sum over a
    non-zero D_MoM), so lam = 0 gives exactly 0 with a zero gradient and any
    lam gives lam * (plain CE)."""
    x = make_logits((6, 5), torch.float32, gen=gen)
    for t in (torch.tensor([1, 2, 3, 4, 1, -100]),        # no O row
              torch.tensor([1, 2, 3, 4, 1, 2])):            # no O row, none ignored
        for mom_norm in ("valid", "rows"):
            out, g = fwd_bwd(x, t, backend, lam=0.0, o_index=0, mom_norm=mom_norm)
            assert out.item() == 0.0 and bool((g == 0).all()), (mom_norm, out)
    # O rows present in the data but all ignored: ignore_index == the O class is
    # an error, so mark them with ignore_index instead
    t = torch.tensor([-100, 2, -100, 4, 1, -100])
    out, g = fwd_bwd(x, t, backend, lam=0.3, o_index=0)
    ce, ce_g = fwd_bwd(x, t, backend, lam=1.0, o_index=0)
    assert_close(out, 0.3 * ce, rtol=1e-6, atol=0, name="0.3 * CE")
    assert_close(g, 0.3 * ce_g, rtol=1e-6, atol=1e-9, name="0.3 * CE gradient")


# ------------------------------------------------- S6 zero total weight


@pytest.mark.parametrize("backend", backend_params())
def test_s6_zero_total_weight(backend):
    """S6: valid rows whose class weights are all 0 (D = 0): mean is 0/0 = NaN
    and every valid row with a non-zero coefficient gets a NaN gradient, exactly
    as F.cross_entropy (lam = 1); ignored rows keep a zero gradient.  With
    mom_norm="rows" and lam = 0 the result is 0/N = 0.  sum is 0 with a zero
    gradient."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.1, 0.2, 0.3], [2.0, 1.0, 0.0, -1.0],
                      [0.3, 0.3, 0.3, 0.3]])
    w = torch.tensor([0.0, 0.0, 1.0, 1.0])
    t = torch.tensor([0, 1, 0, -100])
    out, g = fwd_bwd(x, t, backend, lam=1.0, weight=w)
    xr = x.clone().requires_grad_(True)
    ref = F.cross_entropy(xr, t, weight=w)
    (rg,) = torch.autograd.grad(ref, xr)
    assert math.isnan(out) and math.isnan(ref.detach())
    assert_close(g, rg, rtol=0, atol=0, name="NaN pattern like F.cross_entropy")
    assert bool(torch.isnan(g[:3]).all()) and bool((g[3] == 0).all())
    out, g = fwd_bwd(x, t, backend, lam=0.0, weight=w, o_index=0)  # only O rows count
    assert math.isnan(out)
    assert bool(torch.isnan(g[[0, 2]]).all()) and bool((g[[1, 3]] == 0).all())
    out, g = fwd_bwd(x, t, backend, lam=0.0, weight=w, o_index=0, mom_norm="rows")
    assert out.item() == 0.0 and bool((g == 0).all())
    out, g = fwd_bwd(x, t, backend, lam=0.5, weight=w, reduction="sum")
    assert out.item() == 0.0 and bool((g == 0).all())


# ------------------------------------------------- S7 focal with gamma = 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", backend_params())
def test_s7_focal_gamma0_is_ce_float32(backend, reduction, gen):
    """S7: gamma = 0 focal is CE (pow(q, 0) = 1, also at q = 0), in float32
    with weights and ignored rows (test_edge_cases checks float64)."""
    x = make_logits((9, 6), torch.float32, gen=gen)
    t = torch.tensor([0, 1, 2, 3, 4, 5, -100, 0, 0])
    w = make_weight(6, torch.float32, gen=gen)
    up = torch.rand(9, generator=gen) + 0.5 if reduction == "none" else None
    a, ga = fwd_bwd(x, t, backend, lam=0.3, upstream=up, weight=w, loss="focal", gamma=0.0,
                    reduction=reduction)
    b, gb = fwd_bwd(x, t, backend, lam=0.3, upstream=up, weight=w, reduction=reduction)
    assert_close(a, b, rtol=1e-6, atol=1e-7, name="focal(gamma=0) vs ce")
    assert_close(ga, gb, rtol=1e-5, atol=1e-7, name="gradients")


# ------------------------------------------------- S8 label smoothing with ignore


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", backend_params())
def test_s8_label_smoothing_with_ignored_rows(backend, reduction, gen):
    """S8: ignored rows contribute neither the target term nor the smoothing
    term, and D counts valid rows only: exactly F.cross_entropy (with weights),
    values and gradients."""
    x = make_logits((8, 5), torch.float64, gen=gen)
    t = torch.tensor([0, -100, 2, 3, -100, 4, 1, -100])
    w = make_weight(5, torch.float64, gen=gen)
    for weight in (None, w):
        out = momkernels.cross_entropy(x, t, weight, label_smoothing=0.2, reduction=reduction,
                                       backend=backend)
        (g,) = torch.autograd.grad(out.sum(), x)
        ref = F.cross_entropy(x, t, weight, label_smoothing=0.2, reduction=reduction)
        (rg,) = torch.autograd.grad(ref.sum(), x)
        assert_close(out, ref, rtol=1e-10, atol=1e-12, name="loss")
        assert_close(g, rg, rtol=1e-10, atol=1e-12, name="gradient")
        assert bool((g[[1, 4, 7]] == 0).all())


# ------------------------------------------------- S9 dice at p = 1 and p = 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("backend", backend_params())
def test_s9_dice_at_p_one_and_zero(backend, alpha):
    """S9: dice at p_y = 1 (C = 1, or a saturated row) is w_y / (1 + delta) for
    alpha > 0 (a = q^alpha p = 0) and 0 for alpha = 0 (a = p = 1); at p_y = 0
    (target logit -inf) it is w_y / (1 + delta).  The gradient of such a row is
    exactly 0 (p_y rounds to exactly 1 or 0)."""
    d = 0.25
    at_one = 0.0 if alpha == 0.0 else 1.0 / (1.0 + d)
    w = torch.tensor([2.0, 1.0, 1.0])
    x = torch.tensor([[3.0], [-7.0]])  # C = 1
    out, g = fwd_bwd(x, torch.tensor([0, 0]), backend, lam=1.0, loss="dice", dice_alpha=alpha,
                     dice_smooth=d, reduction="none")
    assert_close(out, torch.full((2,), at_one), rtol=1e-6, atol=0, name="C = 1")
    assert bool((g == 0).all()), g
    # saturated: exp(-200) is exactly 0 in float32 (q = 0, no subnormals)
    x = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 200.0], [0.0, -inf, 0.0]])
    t = torch.tensor([0, 2, 1])
    out, g = fwd_bwd(x, t, backend, lam=1.0, weight=w, loss="dice", dice_alpha=alpha,
                     dice_smooth=d, reduction="none")
    want = torch.tensor([2.0 * at_one, at_one, 1.0 / (1.0 + d)])
    assert_close(out, want, rtol=1e-6, atol=0, name="p = 1, 1, 0")
    assert bool((g == 0).all()), g


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_s9_dice_small_alpha_nearly_saturated_rows_finite(backend, alpha):
    """S9, limitation: dice with alpha < ~0.14 on a row whose q = 1 - p_y is a
    float32 subnormal (margin ~95-103).  The gradient must stay finite; the
    value is only defined to within the float32 resolution of q^alpha."""
    x = torch.tensor([[95.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.3, 0.1, 0.2]])
    t = torch.tensor([0, 0, 1])
    out, g = fwd_bwd(x, t, backend, lam=1.0, loss="dice", dice_alpha=alpha, reduction="none")
    assert bool(torch.isfinite(out).all()), out
    assert bool(torch.isfinite(g).all()), g


# ------------------------------------------------- S10 out-of-range targets


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("bad", [5, -1, -101])
@pytest.mark.parametrize("backend", backend_params())
def test_s10_out_of_range_target(backend, bad, target_dtype):
    """S10: a target outside [0, C) that is not ignore_index.  CPU backends
    ("cpp", "torch") raise IndexError naming the target; Triton follows the GPU
    semantics even under the CPU interpreter: that row's loss and gradient are
    NaN, so is any reduced loss, the other rows are untouched.  check_targets=True
    raises IndexError on every backend."""
    x = _rows()[:, :]  # C = 4
    x = torch.cat([x, x[:, :1]], 1)  # C = 5
    t = torch.tensor([0, bad, 2, 3], dtype=target_dtype)
    with pytest.raises(IndexError, match=str(bad)):
        momkernels.mom_cross_entropy(x, t, backend=backend, check_targets=True)
    if backend in ("cpp", "torch"):
        with pytest.raises(IndexError, match=str(bad)):
            momkernels.mom_cross_entropy(x, t, backend=backend)
        return
    out, g = fwd_bwd(x, t, backend, lam=0.3, reduction="none")
    assert math.isnan(out[1]) and bool(torch.isnan(g[1]).all())
    ok = [0, 2, 3]
    ref_out, ref_g = oracle(x[ok], t[ok], lam=0.3, reduction="none")
    assert_close(out[ok], ref_out, rtol=1e-5, atol=1e-6)
    assert_close(g[ok], ref_g, rtol=1e-5, atol=1e-6)
    out, _ = fwd_bwd(x, t, backend, lam=0.3, reduction="mean")
    assert math.isnan(out)


# ------------------------------------------------- S11 ignore_index vs target dtype


@pytest.mark.parametrize("ignore_index", [2**31, 2**32, 2**32 + 1, -2**31 - 1, 2**40,
                                          2**63 - 1, -2**63])
@pytest.mark.parametrize("backend", backend_params())
def test_s11_int32_target_with_ignore_index_outside_int32(backend, ignore_index, gen):
    """S11: targets and ignore_index are compared exactly (64-bit): with int32
    targets an ignore_index outside the int32 range matches no row -- it must
    not wrap (int32 != 2**32 would compare with 0) -- so the result equals the
    int64 targets' one, which equals the result with no row ignored."""
    x = make_logits((4, 5), torch.float32, gen=gen)
    t64 = torch.tensor([0, 1, 2, 4])
    ref_out, ref_g = fwd_bwd(x, t64, backend, lam=0.3, reduction="none")
    for t in (t64, t64.int()):
        out, g = fwd_bwd(x, t, backend, lam=0.3, reduction="none", ignore_index=ignore_index)
        assert_close(out, ref_out, rtol=0, atol=0, name=f"{t.dtype}")
        assert_close(g, ref_g, rtol=0, atol=0, name=f"{t.dtype} grad")
        assert bool((out != 0).all())
    if backend != "triton":  # F.cross_entropy only takes int64 targets
        ref = F.cross_entropy(x.detach(), t64, ignore_index=ignore_index)
        got = momkernels.cross_entropy(x.detach(), t64.int(), ignore_index=ignore_index,
                                       backend=backend)
        assert_close(got, ref, rtol=1e-6, atol=0, name="cross_entropy vs F.cross_entropy")


@pytest.mark.parametrize("backend", backend_params())
def test_s11_ignore_index_outside_int64_is_a_value_error(backend):
    """S11: ignore_index / o_index must fit in int64: ValueError naming them
    (was a RuntimeError from the operator schema / an OverflowError)."""
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    for v in (2**63, -2**63 - 1):
        with pytest.raises(ValueError, match=rf"ignore_index.*{v}"):
            momkernels.mom_cross_entropy(x, t, ignore_index=v, backend=backend)
        with pytest.raises(ValueError, match=rf"ignore_index.*{v}"):
            momkernels.cross_entropy(x, t, ignore_index=v, backend=backend)
        with pytest.raises(ValueError, match=rf"ignore_index.*{v}"):
            momkernels.CrossEntropyLoss(ignore_index=v)(x, t)
        with pytest.raises(ValueError, match=rf"o_index.*{v}"):
            momkernels.mom_cross_entropy(x, t, o_index=v, backend=backend)


@pytest.mark.parametrize("backend", backend_params())
def test_s11_cross_entropy_with_extreme_ignore_index(backend, gen):
    """S11: cross_entropy accepts every int64 ignore_index, like F.cross_entropy
    (the internal o_index used to be ignore_index - 1: int64 overflow at -2**63)."""
    x = make_logits((4, 5), torch.float32, gen=gen).detach()
    for ii in (-2**63, 2**63 - 1, -1, 0):
        t = torch.tensor([0, 1, ii, 3]) if ii in (-1, 0) else torch.tensor([0, 1, 2, 3])
        got = momkernels.cross_entropy(x, t, ignore_index=ii, backend=backend)
        ref = F.cross_entropy(x, t, ignore_index=ii)
        assert_close(got, ref, rtol=1e-6, atol=0, name=f"ignore_index={ii}")
