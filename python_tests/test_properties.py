"""Property test against the float64 oracle (hypothesis; profile "ci" or "long"
from conftest.py via HYPOTHESIS_PROFILE), and determinism of the C++ kernels."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import momkernels
from helpers import (BACKENDS, DTYPES, HAS_CPP, INTERPRETED, assert_bitwise_equal,
                     check_against_oracle, make_logits, make_targets, make_weight)


def _loss_options(draw, loss):
    """The options of one loss drawn for a property test (shared by the
    strategies below)."""
    if loss == "ce":
        return {"label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]) | st.floats(0, 1))}
    if loss == "focal":
        # gamma >= 1: see test_edge_cases.test_single_class_is_constant for gamma < 1
        return {"gamma": draw(st.sampled_from([1.0, 2.0]) | st.floats(1.0, 5.0))}
    return {"dice_alpha": draw(st.sampled_from([1.0]) | st.floats(1.0, 3.0)),
            "dice_smooth": draw(st.sampled_from([0.01, 1.0]) | st.floats(1e-3, 2.0))}


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
        mom_norm=draw(st.one_of(st.sampled_from(["valid", "rows"]),
                                st.floats(0.5, 1e4), st.integers(1, 10_000))),
    )
    kw.update(_loss_options(draw, loss))
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


# ------------------------------------------------------------- large C

# Class counts at the kernels' block boundaries (CPU tile/row paths, Triton's
# tile <= 128 and 8192-wide row chunks, CUDA's 32-lane groups and chunked rows)
# and the vocabularies of real models, plus uniform draws over 1 ... 70001.
BOUNDARY_C = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025,
              2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192, 8193, 16384, 16385, 32000,
              32003, 50257, 65536, 70001]
# The Triton interpreter costs ~0.1-0.25 s per fwd+bwd at N = 4 and C <= 16385:
# it gets the boundaries up to two 8192-wide chunks, and fewer examples.
TRITON_MAX_C = 16385


@st.composite
def large_c_problems(draw, max_c=70001):
    """Few rows (N = 0 ... 4, or one (C,) row with a 0-dim target), any C in
    1 ... max_c: every docs/spec.md option, both target dtypes, 0 / 50 / 100 % ignored."""
    C = draw(st.sampled_from([c for c in BOUNDARY_C if c <= max_c]) | st.integers(1, max_c))
    one_d = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else False
    N = 1 if one_d else draw(st.integers(0, 4))
    dtype = draw(st.sampled_from(DTYPES))
    loss = draw(st.sampled_from(["ce", "focal", "dice"]))
    kw = dict(
        lam=draw(st.sampled_from([0.0, 0.175, 1.0]) | st.floats(0.0, 1.0)),
        o_index=draw(st.sampled_from([0, C - 1]) | st.integers(0, C - 1)),
        loss=loss,
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        mom_norm=draw(st.one_of(st.sampled_from(["valid", "rows"]),
                                st.floats(0.5, 1e4), st.integers(1, 10_000))),
    )
    kw.update(_loss_options(draw, loss))
    kw["ignore_index"] = draw(st.sampled_from([-100, -1, C]))
    ignore_frac = draw(st.sampled_from([0.0, 0.5, 1.0]))
    kind = draw(st.sampled_from(["random", "ner"]))
    layouts = ["contig", "colslice"] if one_d else ["contig", "transposed", "colslice",
                                                    "rowslice", "expand"]
    layout = draw(st.sampled_from(layouts))
    target_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    strided_target = draw(st.booleans())
    use_weight = draw(st.booleans())
    scale = draw(st.sampled_from([0.1, 1.0, 4.0, 20.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    shape = (C,) if one_d else (N, C)
    return (shape, dtype, kw, ignore_frac, kind, layout, target_dtype, strided_target,
            use_weight, scale, seed)


def _check_large_c(backend, problem):
    (shape, dtype, kw, ignore_frac, kind, layout, target_dtype, strided_target, use_weight,
     scale, seed) = problem
    C = shape[-1]
    tshape = () if len(shape) == 1 else (shape[0],)
    gen = torch.Generator().manual_seed(seed)
    x = make_logits(shape, dtype, gen=gen, scale=scale, layout=layout)
    t = make_targets(tshape, C, gen=gen, kind=kind, o_index=kw["o_index"],
                     ignore_index=kw["ignore_index"], ignore_frac=ignore_frac,
                     dtype=target_dtype, strided=strided_target)
    w = make_weight(C, dtype, gen=gen) if use_weight else None
    upstream = None
    if kw["reduction"] == "none":
        upstream = (torch.rand(tshape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    check_against_oracle(x, t, upstream=upstream, backend=backend, weight=w, **kw)


_LONG = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "long"
# CI: 30 examples per backend (rows of up to 70001 classes cost ~10-30 ms each
# in the float64 oracle); "long": the profile's 2000.
_CI_CAP = {} if _LONG else {"max_examples": 30}


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in INTERPRETED])
@settings(**_CI_CAP)
@given(problem=large_c_problems())
def test_matches_reference_property_large_c(backend, problem):
    """C drawn over 1 ... 70001 (block boundaries and uniform), N = 0 ... 4 or a
    (C,) input: values and gradients against the float64 oracle."""
    _check_large_c(backend, problem)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend not available")
@settings(max_examples=300 if _LONG else 8)
@given(problem=large_c_problems(max_c=TRITON_MAX_C))
def test_matches_reference_property_large_c_triton(problem):
    """The same for Triton (under the interpreter on CPU: C <= 16385, fewer
    examples; float64 logits are routed to another backend by design)."""
    _check_large_c("triton", problem)


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
