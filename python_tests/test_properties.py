"""Property test against the float64 oracle (hypothesis; profile "ci" or "long"
from conftest.py via HYPOTHESIS_PROFILE), and determinism of the C++ kernels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import momkernels
from helpers import (BACKENDS, DTYPES, HAS_CPP, INTERPRETED, assert_bitwise_equal,
                     check_against_oracle, make_logits, make_targets, make_weight)


@st.composite
def mom_problems(draw):
    N = draw(st.integers(0, 40))
    C = draw(st.integers(1, 50))
    dtype = draw(st.sampled_from(DTYPES))
    loss = draw(st.sampled_from(["ce", "focal", "dice"]))
    kw = dict(
        lam=draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        o_index=draw(st.integers(0, C - 1)),
        loss=loss,
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        mom_norm=draw(st.sampled_from(["valid", "rows"])),
    )
    if loss == "ce":
        kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]) | st.floats(0, 1))
    elif loss == "focal":
        # gamma >= 1: see test_edge_cases.test_single_class_is_constant for gamma < 1
        kw["gamma"] = draw(st.sampled_from([1.0, 2.0]) | st.floats(1.0, 5.0))
    else:
        kw["dice_alpha"] = draw(st.sampled_from([1.0]) | st.floats(1.0, 3.0))
        kw["dice_smooth"] = draw(st.sampled_from([0.01, 1.0]) | st.floats(1e-3, 2.0))
    ignore_index = draw(st.sampled_from([-100, -1, C]))
    kw["ignore_index"] = ignore_index
    ignore_frac = draw(st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0.0, 1.0))
    kind = draw(st.sampled_from(["random", "ner"]))
    layout = draw(st.sampled_from(["contig", "transposed", "colslice", "rowslice", "expand"]))
    use_weight = draw(st.booleans())
    scale = draw(st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return N, C, dtype, kw, ignore_frac, kind, layout, use_weight, scale, seed


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in INTERPRETED])
@given(problem=mom_problems())
def test_matches_reference_property(backend, problem):
    N, C, dtype, kw, ignore_frac, kind, layout, use_weight, scale, seed = problem
    gen = torch.Generator().manual_seed(seed)
    x = make_logits((N, C), dtype, gen=gen, scale=scale, layout=layout)
    t = make_targets((N,), C, gen=gen, kind=kind, o_index=kw["o_index"],
                     ignore_index=kw["ignore_index"], ignore_frac=ignore_frac)
    w = make_weight(C, dtype, gen=gen) if use_weight else None
    upstream = None
    if kw["reduction"] == "none":
        upstream = (torch.rand(N, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    check_against_oracle(x, t, upstream=upstream, backend=backend, weight=w, **kw)


# ------------------------------------------------------------- determinism

needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="momkernels._C (backend 'cpp') not built")


def _loss_and_grad(x, t, w, **kw):
    xx = x.detach().clone().requires_grad_(True)
    out = momkernels.mom_cross_entropy(xx, t, 0.175, o_index=0, weight=w, backend="cpp", **kw)
    g = torch.ones_like(out) if out.dim() else None
    out.backward(g)
    return out.detach(), xx.grad


@needs_cpp
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(20_011, 9), (64, 70_001), (300, 1000)],
                         ids=["tile", "rows_big_C", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpp_bitwise_deterministic_across_threads(dtype, shape, reduction, gen):
    """Same bits across repeated calls and across torch.set_num_threads(1) / (2):
    row blocks depend on C only and partial sums are added in block order.
    (The conftest fixture restores the thread count.)"""
    x = make_logits(shape, dtype, gen=gen)
    t = make_targets((shape[0],), shape[1], gen=gen, kind="ner", o_index=0)
    w = make_weight(shape[1], torch.float32, gen=gen)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    torch.set_num_threads(2)
    a_out, a_grad = _loss_and_grad(x, t, w, **kw)
    b_out, b_grad = _loss_and_grad(x, t, w, **kw)
    assert_bitwise_equal(a_out, b_out, "repeated loss")
    assert_bitwise_equal(a_grad, b_grad, "repeated grad")
    torch.set_num_threads(1)
    c_out, c_grad = _loss_and_grad(x, t, w, **kw)
    assert_bitwise_equal(a_out, c_out, "loss, 2 threads vs 1")
    assert_bitwise_equal(a_grad, c_grad, "grad, 2 threads vs 1")


@needs_cpp
def test_cpp_deterministic_for_each_loss(gen):
    x = make_logits((5000, 37), torch.float32, gen=gen)
    t = make_targets((5000,), 37, gen=gen, kind="ner", o_index=0)
    for loss in ("ce", "focal", "dice"):
        torch.set_num_threads(2)
        a = _loss_and_grad(x, t, None, loss=loss)
        torch.set_num_threads(1)
        b = _loss_and_grad(x, t, None, loss=loss)
        assert_bitwise_equal(a[0], b[0], f"{loss} loss")
        assert_bitwise_equal(a[1], b[1], f"{loss} grad")
