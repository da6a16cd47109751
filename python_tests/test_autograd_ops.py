"""Gradients by finite differences (float64 ``gradcheck``), the custom operators
under ``torch.library.opcheck``, and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import math
import os

import pytest
import torch

import momkernels
from momkernels import options
from helpers import BACKENDS, HAS_CPP, make_logits, make_targets, make_weight

needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="momkernels._C (backend 'cpp') not built")

# (id, kwargs) -- moderate logits keep focal/dice smooth at the sample point
GRADCHECK_CASES = [
    ("ce", dict(loss="ce")),
    ("ce_w", dict(loss="ce", use_weight=True)),
    ("ce_ls", dict(loss="ce", label_smoothing=0.1)),
    ("ce_ls_w", dict(loss="ce", label_smoothing=0.3, use_weight=True)),
    ("focal", dict(loss="focal")),
    ("focal_w_g0.5", dict(loss="focal", gamma=0.5, use_weight=True)),
    ("focal_g1.5_rows", dict(loss="focal", gamma=1.5, mom_norm="rows")),
    ("dice", dict(loss="dice")),
    ("dice_w_a0.5", dict(loss="dice", dice_alpha=0.5, dice_smooth=0.3, use_weight=True)),
    ("dice_a2_rows", dict(loss="dice", dice_alpha=2.0, mom_norm="rows", use_weight=True)),
]


# gradcheck is about the compiled backward: the "torch" backend's gradient is
# autograd's own, and "triton" hands float64 logits on to "cpp".


@pytest.mark.parametrize("lam", [0.0, 0.175, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [c[1] for c in GRADCHECK_CASES],
                         ids=[c[0] for c in GRADCHECK_CASES])
@pytest.mark.parametrize("backend", ["cpp"] if HAS_CPP else [])
def test_gradcheck(backend, case, reduction, lam, gen):
    case = dict(case)
    N, C, o = 9, 5, 1
    x = make_logits((N, C), torch.float64, gen=gen, scale=1.5)
    t = torch.tensor([1, 1, 3, -100, 1, 0, 4, -100, 1])  # O rows, entity rows, ignored
    w = make_weight(C, torch.float64, gen=gen) if case.pop("use_weight", False) else None

    def f(inp):
        return momkernels.mom_cross_entropy(inp, t, lam, o_index=o, weight=w,
                                            reduction=reduction, backend=backend, **case)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@needs_cpp
def test_gradcheck_nd_and_strided(gen):
    """(N, C, d1) with classes last in memory, strided int32 targets."""
    x = make_logits((3, 7, 4), torch.float64, gen=gen, scale=1.5, layout="transposed")
    t = make_targets((3, 4), 7, gen=gen, kind="ner", o_index=2, dtype=torch.int32, strided=True)
    w = make_weight(7, torch.float64, gen=gen)
    for loss in ("ce", "focal", "dice"):
        def f(inp):
            return momkernels.mom_cross_entropy(inp, t, 0.3, o_index=2, weight=w, loss=loss,
                                                reduction="none", backend="cpp")

        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5), loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_not_written_into_logits(backend, gen):
    """The backward must not overwrite the logits in place (a Liger pitfall):
    logits used by a second consumer keep their values and gradient."""
    x = make_logits((9, 5), torch.float32, gen=gen)
    t = torch.tensor([0, 1, 2, 3, 4, 0, 0, -100, 0])
    before = x.detach().clone()
    loss = momkernels.mom_cross_entropy(x, t, 0.5, backend=backend) + (x * 2).sum()
    loss.backward()
    assert torch.equal(x.detach(), before)
    # the second consumer contributes exactly 2 to every entry's gradient
    xr = before.clone().requires_grad_(True)
    momkernels.mom_cross_entropy(xr, t, 0.5, backend=backend).backward()
    torch.testing.assert_close(x.grad, xr.grad + 2)


# ------------------------------------------------------------- opcheck


def _fwd_samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for dtype, red, use_w, loss, ls, norm in [
        (torch.float32, "mean", False, "ce", 0.0, "valid"),
        (torch.float32, "sum", True, "ce", 0.1, "valid"),
        (torch.float64, "none", True, "focal", 0.0, "valid"),
        (torch.bfloat16, "mean", True, "dice", 0.0, "rows"),
        (torch.float16, "none", False, "ce", 0.2, "valid"),
        (torch.float64, "mean", False, "focal", 0.0, "rows"),
        # a number as mom_norm: 'fixed' with the Scalar denominator (int and float)
        (torch.float32, "mean", True, "ce", 0.1, 40),
        (torch.bfloat16, "mean", False, "focal", 0.0, 12.5),
    ]:
        N, C = 11, 7
        x = (torch.randn(N, C, generator=g) * 2).to(dtype).requires_grad_(True)
        t = torch.randint(0, C, (N,), generator=g)
        t[::4] = -100
        t[1::3] = 0
        w = (torch.rand(C, generator=g) + 0.5).to(dtype) if use_w else None
        out.append((x, t, w, 0.175, 0, -100, loss, 2.0, 1.0, 0.01, ls, red,
                    *options.mom_norm_args(norm)))
    # int32 targets and an empty batch
    x = torch.randn(5, 3, dtype=torch.float32, requires_grad=True)
    out.append((x, torch.tensor([0, 1, 2, -1, 0], dtype=torch.int32), None, 0.5, 0, -1, "ce",
                2.0, 1.0, 0.01, 0.0, "sum", "valid", 0))
    x = torch.randn(0, 3, dtype=torch.float32, requires_grad=True)
    out.append((x, torch.empty(0, dtype=torch.int64), None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01,
                0.0, "sum", "valid", 0))
    return out


@needs_cpp
@pytest.mark.parametrize("args", _fwd_samples(),
                         ids=lambda a: f"{str(a[0].dtype)[6:]}-{a[11]}-{a[12]}{a[13] or ''}-{a[6]}-"
                                       f"{'w' if a[2] is not None else 'now'}-N{a[0].shape[0]}")
def test_opcheck_forward(args):
    torch.library.opcheck(torch.ops.momkernels.mom_loss_fwd.default, args)


@needs_cpp
@pytest.mark.parametrize("args", _fwd_samples(),
                         ids=lambda a: f"{str(a[0].dtype)[6:]}-{a[11]}-{a[12]}{a[13] or ''}-{a[6]}-"
                                       f"{'w' if a[2] is not None else 'now'}-N{a[0].shape[0]}")
def test_opcheck_backward(args):
    (x, t, w, lam, o, ign, loss, gamma, al, de, ls, red, norm, denom) = args
    with torch.no_grad():
        out, stats, coef = torch.ops.momkernels.mom_loss_fwd(x, t, w, lam, o, ign, loss, gamma,
                                                             al, de, ls, red, norm, denom)
    grad = torch.rand_like(out) + 0.5
    bargs = (grad, x.detach(), t, w, stats, coef, o, ign, loss, gamma, al, de, ls)
    torch.library.opcheck(torch.ops.momkernels.mom_loss_bwd.default, bargs)
    # and the backward op is what autograd uses
    gi = torch.ops.momkernels.mom_loss_bwd(*bargs)
    xx = x.detach().clone().requires_grad_(True)
    o2, _, _ = torch.ops.momkernels.mom_loss_fwd(xx, t, w, lam, o, ign, loss, gamma, al, de,
                                                 ls, red, norm, denom)
    (ga,) = torch.autograd.grad(o2, xx, grad)
    if _fused_path(x):
        # small C, float/double on the CPU: autograd takes the fused pair of
        # operators (csrc/autograd.cpp); the same gradient to rounding, and
        # bitwise what the fused operators give
        torch.testing.assert_close(ga, gi, rtol=1e-5, atol=1e-6)
        _, _, _, gf, gscale = torch.ops.momkernels.mom_loss_fwd_fused(x.detach(), t, w, lam, o,
                                                                     ign, loss, gamma, al, de,
                                                                     ls, red, norm, denom)
        torch.ops.momkernels.mom_loss_bwd_fused_(gf, grad, t, gscale, o, ign)
        assert torch.equal(gf, ga)
    else:
        assert torch.equal(gi, ga)


def _fused_path(x):
    # float / double only: bfloat16 / float16 logits are fused too, but with an
    # upstream gradient other than 1 (as here) autograd calls mom_loss_bwd,
    # so their gradient is the backward operator's, bitwise
    return (os.environ.get("MOMKERNELS_FUSED", "1") != "0" and x.device.type == "cpu"
            and x.shape[1] <= 64 and x.dtype in (torch.float32, torch.float64))


@needs_cpp
@pytest.mark.parametrize("args", _fwd_samples(),
                         ids=lambda a: f"{str(a[0].dtype)[6:]}-{a[11]}-{a[12]}{a[13] or ''}-{a[6]}-"
                                       f"{'w' if a[2] is not None else 'now'}-N{a[0].shape[0]}")
def test_opcheck_fused_ops(args):
    """The fused forward (loss + gradient for a unit upstream gradient) and its
    in-place backward: opcheck, and the gradient equals the two-operator one."""
    (x, t, w, lam, o, ign, loss, gamma, al, de, ls, red, norm, denom) = args
    x = x.detach()
    torch.library.opcheck(torch.ops.momkernels.mom_loss_fwd_fused.default, (x, *args[1:]),
                          test_utils=("test_schema", "test_faketensor"))
    out, stats, coef, gf, gscale = torch.ops.momkernels.mom_loss_fwd_fused(x, *args[1:])
    out2, stats2, coef2 = torch.ops.momkernels.mom_loss_fwd(x, *args[1:])
    assert torch.equal(out, out2) or (out.isnan().all() and out2.isnan().all())
    grad = torch.rand_like(out) + 0.5
    torch.library.opcheck(torch.ops.momkernels.mom_loss_bwd_fused_.default,
                          (gf.clone(), grad, t, gscale, o, ign),
                          test_utils=("test_schema", "test_faketensor"))
    torch.ops.momkernels.mom_loss_bwd_fused_(gf, grad, t, gscale, o, ign)
    gi = torch.ops.momkernels.mom_loss_bwd(grad, x, t, w, stats2, coef2, o, ign, loss, gamma, al,
                                          de, ls)
    half = x.dtype in (torch.float16, torch.bfloat16)
    tol = dict(rtol=2e-2, atol=1e-3) if half else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gf, gi, **tol)


@needs_cpp
@pytest.mark.parametrize("loss", ["ce", "focal", "dice"])
@pytest.mark.parametrize("reduction,use_w", [("mean", False), ("mean", True), ("sum", True)],
                         ids=["mean", "mean-w", "sum-w"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_fused_gradient_is_rounded_once(dtype, reduction, use_w, loss):
    """Small C, half precision, CPU: autograd takes the fused path.  With
    loss.backward() (upstream 1) the gradient is the forward kernel's, rounded
    once from float math: it equals the float64 oracle rounded to the dtype
    except where float32 rounding error crosses a rounding boundary (rare, and
    then by one unit in the last place).  Any other upstream gradient takes
    the backward operator, bitwise (rescaling the rounded buffer would round
    twice)."""
    g = torch.Generator().manual_seed(3)
    N, C = 3000, 9
    x = (torch.randn(N, C, generator=g) * 3).to(dtype)
    t = torch.randint(0, C, (N,), generator=g)
    t[::7] = -100
    t[1::3] = 0
    w = (torch.rand(C, generator=g) + 0.5) if use_w else None
    kw = dict(weight=w, loss=loss, reduction=reduction)
    xx = x.clone().requires_grad_()
    momkernels.mom_cross_entropy(xx, t, 0.175, backend="cpp", **kw).backward()
    xd = x.double().requires_grad_()
    ref = momkernels.mom_cross_entropy(xd, t, 0.175, backend="torch",
                                       **{**kw, "weight": None if w is None else w.double()})
    ref.backward()
    want = xd.grad.to(dtype)
    exact = float((xx.grad == want).double().mean())
    assert exact >= 0.998, f"only {exact:.4f} of the entries are the rounded float64 gradient"
    eps = torch.finfo(dtype).eps
    tiny = float(torch.finfo(dtype).smallest_normal)
    torch.testing.assert_close(xx.grad.double(), xd.grad, rtol=eps, atol=tiny * eps)
    # upstream 2.5: the backward operator's gradient, bitwise
    xx.grad = None
    out = momkernels.mom_cross_entropy(xx, t, 0.175, backend="cpp", **kw)
    up = torch.tensor(2.5, dtype=dtype)
    (ga,) = torch.autograd.grad(out, xx, up)
    with torch.no_grad():
        o2, stats, coef = torch.ops.momkernels.mom_loss_fwd(x, t, w, 0.175, 0, -100, loss, 2.0,
                                                            1.0, 0.01, 0.0, reduction, "valid")
        gi = torch.ops.momkernels.mom_loss_bwd(up, x, t, w, stats, coef, 0, -100, loss, 2.0,
                                               1.0, 0.01, 0.0)
    assert torch.equal(ga, gi)


@needs_cpp
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mom_norm", ["valid", "rows", 3])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_retain_graph_second_backward_is_bitwise_equal(reduction, mom_norm, lam):
    """The fused path hands its gradient buffer on after the first backward;
    a second backward through the same graph recomputes it bitwise."""
    torch.manual_seed(0)
    x = torch.randn(300, 9, requires_grad=True)
    t = torch.randint(0, 9, (300,))
    t[::7] = -100
    out = momkernels.mom_cross_entropy(x, t, lam, reduction=reduction, mom_norm=mom_norm,
                                       backend="cpp")
    g = torch.rand_like(out) + 0.5
    (g1,) = torch.autograd.grad(out, x, g, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x, g, retain_graph=True)
    (g3,) = torch.autograd.grad(out, x, g)
    assert torch.equal(g1, g2) and torch.equal(g1, g3)
    xd = x.detach().double().requires_grad_()
    ref = momkernels.mom_cross_entropy(xd, t, lam, reduction=reduction, mom_norm=mom_norm,
                                       backend="torch")
    (gr,) = torch.autograd.grad(ref, xd, g.double())
    torch.testing.assert_close(g1.double(), gr, rtol=1e-5, atol=1e-7)


@needs_cpp
def test_op_outputs():
    """Documented outputs: loss in input dtype ((N,) or 0-dim), stats (N, 2) and
    coef (2,) in the math dtype."""
    x = torch.randn(6, 4, dtype=torch.bfloat16)
    t = torch.tensor([0, 1, 2, 3, 0, -100])
    for red, shape in (("none", (6,)), ("mean", ()), ("sum", ())):
        out, stats, coef = torch.ops.momkernels.mom_loss_fwd(
            x, t, None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, red, "valid")
        assert out.dtype == torch.bfloat16 and tuple(out.shape) == shape
        assert stats.dtype == torch.float32 and tuple(stats.shape) == (6, 2)
        assert coef.dtype == torch.float32 and tuple(coef.shape) == (2,)


@needs_cpp
def test_op_rejects_bad_direct_calls():
    """The operators check their inputs too (for direct torch.ops calls)."""
    op = torch.ops.momkernels.mom_loss_fwd
    x = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    base = (None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, "mean", "valid")
    with pytest.raises(ValueError, match="input"):
        op(x[None], t, *base)
    with pytest.raises(ValueError, match="target"):
        op(x, t[:3], *base)
    with pytest.raises(TypeError, match="target"):
        op(x, t.float(), *base)
    with pytest.raises(TypeError, match="input"):
        op(x.long(), t, *base)
    with pytest.raises(ValueError, match="weight"):
        op(x, t, torch.ones(4), *base[1:])
    with pytest.raises(ValueError, match="loss"):
        op(x, t, None, 0.5, 0, -100, "hinge", 2.0, 1.0, 0.01, 0.0, "mean", "valid")
    with pytest.raises(ValueError, match="reduction"):
        op(x, t, None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, "avg", "valid")
    with pytest.raises(ValueError, match="mom_norm"):
        op(x, t, None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, "mean", "tokens")
    for bad_denom in (0.0, -3.0, math.inf, math.nan):  # 'fixed' needs a positive finite number
        with pytest.raises(ValueError, match="mom_denom"):
            op(x, t, None, 0.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, "mean", "fixed", bad_denom)
    with pytest.raises(ValueError, match="lam"):
        op(x, t, None, 1.5, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0, "mean", "valid")
    with pytest.raises(ValueError, match="label_smoothing"):
        op(x, t, None, 0.5, 0, -100, "focal", 2.0, 1.0, 0.01, 0.1, "mean", "valid")
    with pytest.raises(IndexError, match="out of bounds"):
        op(x, torch.tensor([0, 1, 3, 0]), *base)


@needs_cpp
@pytest.mark.parametrize("C", [9, 64, 100], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
def test_target_classification_parity(C, ignore_index, gen):
    """mom_loss.h's target rule (valid / ignored / bad) gives the same rows
    whichever classification loop runs: contiguous int64 targets take the
    vector loop where the CPU has one (AVX-512), strided or int32 targets the
    scalar one; C = 100 the row path's per-row test.  Outputs and gradients
    bitwise equal; an out-of-range target is the same IndexError."""
    N = 300  # more than one tile block (256 rows) and a partial vector group
    x = torch.randn(N, C, generator=gen)
    t = torch.randint(0, C, (N,), generator=gen)
    t[::7] = ignore_index
    t[3::11] = 0
    args = (None, 0.3, 0, ignore_index, "ce", 2.0, 1.0, 0.01, 0.0, "none", "valid")
    runs = []
    for tt in (t, torch.stack([t, t], 1)[:, 0], t.to(torch.int32)):
        xx = x.clone().requires_grad_(True)
        out, stats, coef = torch.ops.momkernels.mom_loss_fwd(xx, tt, *args)
        (g,) = torch.autograd.grad(out.sum(), xx)
        runs.append((out, stats, g))
    for out, stats, g in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(stats, runs[0][1])
        assert torch.equal(g, runs[0][2])
    bad = t.clone()
    bad[N - 5] = C  # out of range, in the last (partial) block
    for tt in (bad, torch.stack([bad, bad], 1)[:, 0], bad.to(torch.int32)):
        with pytest.raises(IndexError, match=f"Target {C} is out of bounds"):
            torch.ops.momkernels.mom_loss_fwd(x, tt, *args)


@needs_cpp
@pytest.mark.parametrize("C", [9, 100], ids=lambda c: f"C{c}")
def test_o_index_none_is_no_class(C, gen):
    """``int? o_index``: None (cross_entropy) matches no row.  With lam = 1 it
    is bitwise a call whose o_index is any class; opcheck accepts it."""
    x = torch.randn(40, C, generator=gen)
    t = torch.randint(0, C, (40,), generator=gen)
    t[::5] = -100
    for red in ("mean", "sum", "none"):
        rest = (-100, "ce", 2.0, 1.0, 0.01, 0.1, red, "valid")
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        a = torch.ops.momkernels.mom_loss_fwd(xa, t, None, 1.0, None, *rest)
        b = torch.ops.momkernels.mom_loss_fwd(xb, t, None, 1.0, 0, *rest)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
        (ga,) = torch.autograd.grad(a[0].sum(), xa)
        (gb,) = torch.autograd.grad(b[0].sum(), xb)
        assert torch.equal(ga, gb)
        torch.library.opcheck(torch.ops.momkernels.mom_loss_fwd.default,
                              (x.clone().requires_grad_(True), t, None, 1.0, None, *rest))


# ------------------------------------------------------------- torch.compile


@needs_cpp
@pytest.mark.slow
@pytest.mark.parametrize("case", [
    dict(shape=(33, 9), dtype=torch.float32, loss="ce", reduction="mean", label_smoothing=0.1,
         use_weight=True),
    dict(shape=(3, 9, 5), dtype=torch.bfloat16, loss="focal", reduction="none", use_weight=False,
         mom_norm="rows"),
], ids=["ce-mean-w-ls-fp32", "focal-none-nd-bf16"])
def test_compile_fullgraph_matches_eager(case, gen):
    case = dict(case)
    shape, dtype = case.pop("shape"), case.pop("dtype")
    use_w = case.pop("use_weight")
    C = shape[1]
    x = make_logits(shape, dtype, gen=gen)
    tshape = (shape[0],) + shape[2:]
    t = make_targets(tshape, C, gen=gen, kind="ner", o_index=1)
    w = make_weight(C, dtype, gen=gen) if use_w else None

    def f(inp, tgt, weight):
        out = momkernels.mom_cross_entropy(inp, tgt, 0.175, o_index=1, weight=weight,
                                           backend="cpp", **case)
        return out.sum() * 1.5  # something around the op for the compiler to fuse

    torch._dynamo.reset()
    try:
        cf = torch.compile(f, fullgraph=True, dynamic=False)
        xc = x.detach().clone().requires_grad_(True)
        out_c = cf(xc, t, w)
        out_c.backward()
        out_e = f(x, t, w)
        out_e.backward()
        assert torch.equal(out_c, out_e), (out_c, out_e)
        assert torch.equal(xc.grad, x.grad)
        # a second batch of the same shape reuses the graph and is still right
        x2 = make_logits(shape, dtype, gen=gen)
        x2c = x2.detach().clone().requires_grad_(True)
        cf(x2c, t, w).backward()
        f(x2, t, w).backward()
        assert torch.equal(x2c.grad, x2.grad)
    finally:
        torch._dynamo.reset()


@needs_cpp
@pytest.mark.parametrize("mom_norm", ["valid", "paper"])
def test_compile_does_not_recompile_per_batch_shape(mom_norm):
    """torch.compile(fullgraph=True) of a training-loop loss whose batch size
    and padded length change every step (dynamic padding, a short last batch),
    with the paper's normalisation mom_norm = sentences x 128 (a SymInt under
    dynamic shapes): one graph for the first shape, one when the length turns
    dynamic, one when the batch size does -- then no more.  (The C++ autograd
    kernel once read input.size(1), which specialised every graph on N; a
    float mom_norm would specialise on each batch size.)"""
    from torch._dynamo.utils import counters

    C = 9
    norm = (lambda y: y.shape[0] * 128) if mom_norm == "paper" else (lambda y: "valid")

    def step(logits, labels):
        return momkernels.mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1), 0.175,
                                            mom_norm=norm(labels), backend="cpp")

    torch._dynamo.reset()
    counters.clear()
    f = torch.compile(step, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    for B, T in [(8, 10), (8, 11), (5, 9), (8, 14), (3, 7), (7, 12)]:
        x = torch.randn(B, T, C, generator=g, requires_grad=True)
        y = torch.randint(0, C, (B, T), generator=g)
        out = f(x, y)
        (gx,) = torch.autograd.grad(out, x)
        ref = momkernels.mom_cross_entropy(x.reshape(-1, C), y.reshape(-1), 0.175,
                                           mom_norm=norm(y), backend="torch")
        (rx,) = torch.autograd.grad(ref, x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-7)
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
