"""``momkernels.cross_entropy`` / ``CrossEntropyLoss`` against PyTorch's own
``F.cross_entropy`` / ``nn.CrossEntropyLoss`` (not via reference.py), and the
modules against the functions.

The value is compared with PyTorch on the same dtype for float32/float64.  The
gradient (and the value for float16/bfloat16) is compared with PyTorch on the
float64 upcast of the same logits: PyTorch's own float32 gradient forms
p_y - 1 by cancellation (~1e-7 absolute error, large relative error when p_y is
near 1, where momkernels is more accurate), and its float16/bfloat16 CPU kernel
rounds intermediate log-probabilities to the low-precision dtype while docs/spec.md
says the math is float32.  Tolerances are the dtype's (helpers.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import momkernels
from helpers import (assert_close, backend_params, coefficient_scale, grad_tol, make_logits,
                     make_targets, make_weight, oracle_floor, target_shape, value_tol)

# C = 1, 2, 9, 37: the tile / small-C kernels (CPU C <= 64, CUDA and Triton
# C <= 128); C = 1000: the row kernels; (C,), (N, C, d...) the reshapes
SHAPES = [(9,), (33, 9), (1, 2), (7, 1), (5, 37, 3), (2, 9, 3, 5), (3, 1000)]


def _compare(x, t, w, backend, upstream=None, **kw):
    dtype = x.dtype
    out = momkernels.cross_entropy(x, t, w, backend=backend, **kw)
    x64 = x.detach().double().requires_grad_(True)
    ref = F.cross_entropy(x64, t, None if w is None else w.double(), **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    g = torch.ones_like(ref) if upstream is None else upstream.double()
    (grad,) = torch.autograd.grad(out, x, g.to(dtype))
    (rgrad,) = torch.autograd.grad(ref, x64, g)
    rtol, atol = value_tol(dtype)
    assert_close(out, ref, rtol=rtol, atol=atol, name="loss vs F.cross_entropy(float64)")
    if dtype in (torch.float32, torch.float64):
        same = F.cross_entropy(x.detach(), t, w, **kw)
        assert_close(out, same, rtol=rtol, atol=atol, name=f"loss vs F.cross_entropy({dtype})")
    finite = rgrad[rgrad.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    grtol, gatol = grad_tol(dtype, scale)
    gatol += oracle_floor(dtype, coefficient_scale(
        t, lam=1.0, o_index=-1, weight=w, upstream=upstream, **kw))
    assert_close(grad, rgrad, rtol=grtol, atol=gatol, name="grad")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_equals_f_cross_entropy(backend, dtype, shape, use_weight, ignore_index, reduction,
                                label_smoothing, device, gen):
    """On every device (conftest.py's ``device``): against PyTorch's own
    F.cross_entropy of that device."""
    x = make_logits(shape, dtype, gen=gen, device=device)
    C = shape[0] if len(shape) == 1 else shape[1]
    t = make_targets(target_shape(shape), C, gen=gen, ignore_index=ignore_index,
                     ignore_frac=0.3, device=device)
    w = make_weight(C, dtype, gen=gen, device=device) if use_weight else None
    up = None
    if reduction == "none":
        up = (torch.rand(t.shape, generator=gen, dtype=dtype) + 0.5).to(device)
    _compare(x, t, w, backend, up, ignore_index=ignore_index, reduction=reduction,
             label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("shape", [(9,), (33, 9), (5, 37, 3), (3, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True))
def test_low_precision_equals_f_cross_entropy_upcast(backend, dtype, shape, use_weight,
                                                      reduction, label_smoothing, gen):
    x = make_logits(shape, dtype, gen=gen)
    C = shape[0] if len(shape) == 1 else shape[1]
    t = make_targets(target_shape(shape), C, gen=gen, ignore_frac=0.3)
    w = make_weight(C, dtype, gen=gen) if use_weight else None
    _compare(x, t, w, backend, ignore_index=-100, reduction=reduction,
             label_smoothing=label_smoothing)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("backend", backend_params())
def test_empty_batch_like_pytorch(backend, use_weight, reduction):
    for shape in [(0, 5), (0, 5, 3)]:
        x = torch.empty(shape, dtype=torch.float64, requires_grad=True)
        t = torch.empty(target_shape(shape), dtype=torch.int64)
        w = torch.rand(5, dtype=torch.float64) if use_weight else None
        out = momkernels.cross_entropy(x, t, w, reduction=reduction, backend=backend)
        ref = F.cross_entropy(x, t, w, reduction=reduction)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert_close(out, ref, rtol=0, atol=0, name=f"{shape} {reduction}")  # NaN for mean
        (g,) = torch.autograd.grad(out.sum(), x)
        assert g.shape == shape


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("backend", backend_params())
def test_all_ignored_like_pytorch(backend, use_weight, reduction, label_smoothing):
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.full((6,), 3)
    w = torch.rand(5, dtype=torch.float64) + 0.5 if use_weight else None
    kw = dict(ignore_index=3, reduction=reduction, label_smoothing=label_smoothing)
    out = momkernels.cross_entropy(x, t, w, backend=backend, **kw)
    ref = F.cross_entropy(x, t, w, **kw)
    assert_close(out, ref, rtol=0, atol=0, name="loss")  # NaN for mean, as PyTorch
    (g,) = torch.autograd.grad(out.sum(), x)
    (rg,) = torch.autograd.grad(ref.sum(), x)
    if reduction != "mean":
        assert_close(g, rg, rtol=0, atol=0, name="grad")
    assert bool((g == 0).all()), g


@pytest.mark.parametrize("backend", backend_params())
def test_int32_targets_and_noncontiguous(backend, gen):
    x = make_logits((33, 9), torch.float32, gen=gen, layout="transposed")
    t = make_targets((33,), 9, gen=gen, dtype=torch.int32, strided=True)
    out = momkernels.cross_entropy(x, t, backend=backend)
    ref = F.cross_entropy(x.detach(), t.long())
    assert_close(out, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- modules


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("backend", backend_params())
def test_cross_entropy_loss_module(backend, use_weight, reduction, label_smoothing, gen):
    x = make_logits((5, 9, 4), torch.float64, gen=gen)
    t = make_targets((5, 4), 9, gen=gen, ignore_index=1)
    w = make_weight(9, torch.float64, gen=gen) if use_weight else None
    kw = dict(weight=w, ignore_index=1, reduction=reduction, label_smoothing=label_smoothing)
    mine = momkernels.CrossEntropyLoss(backend=backend, **kw)
    theirs = torch.nn.CrossEntropyLoss(**kw)
    out, ref = mine(x, t), theirs(x, t)
    assert_close(out, ref, rtol=1e-12, atol=1e-14, name="loss")
    (g,) = torch.autograd.grad(out.sum(), x)
    (rg,) = torch.autograd.grad(ref.sum(), x)
    assert_close(g, rg, rtol=1e-12, atol=1e-14, name="grad")
    if w is not None:
        assert "weight" in dict(mine.named_buffers())


def test_cross_entropy_loss_module_legacy_args():
    """size_average / reduce map onto reduction exactly as in PyTorch."""
    x = torch.randn(7, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, -100, 1, 2])
    for size_average, reduce in [(True, True), (False, True), (None, False), (False, None)]:
        with pytest.warns(UserWarning):
            theirs = torch.nn.CrossEntropyLoss(size_average=size_average, reduce=reduce)
        with pytest.warns(UserWarning):
            mine = momkernels.CrossEntropyLoss(size_average=size_average, reduce=reduce)
        assert mine.reduction == theirs.reduction
        assert_close(mine(x, t), theirs(x, t), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["ce", "focal", "dice"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", backend_params())
def test_mom_loss_module_equals_function(backend, reduction, loss, gen):
    x = make_logits((3, 9, 5), torch.float32, gen=gen)
    t = make_targets((3, 5), 9, gen=gen, kind="ner", o_index=4)
    w = make_weight(9, torch.float32, gen=gen)
    kw = dict(o_index=4, weight=w, loss=loss, gamma=1.5, dice_alpha=0.8, dice_smooth=0.2,
              reduction=reduction, mom_norm="rows", backend=backend)
    module = momkernels.MoMLoss(0.3, **kw)
    out = module(x, t)
    ref = momkernels.mom_cross_entropy(x, t, 0.3, **kw)
    assert torch.equal(out, ref)
    (g,) = torch.autograd.grad(out.sum(), x)
    (rg,) = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(g, rg)
    assert "weight" in dict(module.named_buffers())
    assert "lam=0.3" in repr(module)


@pytest.mark.parametrize("backend", backend_params())
def test_mom_loss_module_mom_norm_number_and_per_call_override(backend, gen):
    """A number as mom_norm in the module, and forward(..., mom_norm=) for a
    denominator that changes with the batch (the paper's sentences x M)."""
    x = make_logits((3, 9, 5), torch.float32, gen=gen)
    t = make_targets((3, 5), 9, gen=gen, kind="ner", o_index=4)
    kw = dict(o_index=4, backend=backend)
    module = momkernels.MoMLoss(0.3, mom_norm=3 * 128, **kw)
    want = momkernels.mom_cross_entropy(x, t, 0.3, mom_norm=384, **kw)
    assert torch.equal(module(x, t), want)
    assert "mom_norm=384" in repr(module)
    want = momkernels.mom_cross_entropy(x, t, 0.3, mom_norm=2 * 128, **kw)
    assert torch.equal(module(x, t, mom_norm=256), want)
    assert not torch.equal(want, module(x, t))  # the override changed the value


def test_mom_loss_module_validates_at_construction():
    with pytest.raises(ValueError, match="lam"):
        momkernels.MoMLoss(1.5)
    with pytest.raises(ValueError, match="loss"):
        momkernels.MoMLoss(0.5, loss="hinge")
    with pytest.raises(ValueError, match="o_index"):
        momkernels.MoMLoss(0.5, o_index=-100)
