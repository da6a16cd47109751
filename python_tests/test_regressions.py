"""Regression tests for bugs found after the fact (one test per bug)."""

import pytest
import torch
import torch.nn.functional as F

import momkernels
from helpers import BACKENDS


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("C", [5000, 70001])
def test_row_path_chunk_of_neg_inf_logits(C, label_smoothing):
    # A whole 2048-class chunk of -inf logits in the large-C (row) path used to
    # give NaN: exp(-inf - (-inf)) of that chunk, times a zero rescale factor.
    torch.manual_seed(0)
    x = torch.randn(3, C)
    x[:, :2100] = -float("inf")
    t = torch.tensor([2200, C - 1, 2500])
    got = momkernels.cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing,
                                   backend="cpp")
    want = F.cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(got).all() == (label_smoothing == 0.0)


def test_recycled_gradient_buffers_are_fully_written():
    # The CPU backward recycles freed gradient buffers of >= 1 MiB (csrc/cpu/
    # ops_cpu.cpp): a recycled block holds the previous gradient, so every
    # element -- ignored rows included -- must be overwritten, and two live
    # gradients must never share a block.
    torch.manual_seed(0)
    N, C = 64, 5000  # 1.28 MB of float32 gradient
    x = torch.randn(N, C, requires_grad=True)
    t = torch.randint(0, C, (N,))
    g_first = torch.autograd.grad(momkernels.mom_cross_entropy(x, t, 0.3, backend="cpp"), x)[0]
    t2 = t.clone()
    t2[::2] = -100  # ignored rows must come back as exact zeros, not stale values
    g_live = torch.autograd.grad(momkernels.mom_cross_entropy(x, t2, 0.3, backend="cpp"), x)[0]
    assert g_live.data_ptr() != g_first.data_ptr()
    del g_first  # its block goes back to the cache ...
    g_reused = torch.autograd.grad(momkernels.mom_cross_entropy(x, t2, 0.3, backend="cpp"), x)[0]
    assert torch.equal(g_reused, g_live)  # ... and is fully rewritten when reused
    assert bool((g_reused[::2] == 0).all())
    # accumulation into a recycled .grad
    x.grad = None
    for _ in range(3):
        momkernels.mom_cross_entropy(x, t2, 0.3, backend="cpp").backward()
    torch.testing.assert_close(x.grad, 3 * g_live)


def test_torch_backend_ignored_row_with_nan_logits_has_zero_gradient():
    # reference.py (backend "torch") gave a NaN gradient row to an ignored row
    # holding a NaN or +inf logit (log_softmax's backward of a NaN row), where
    # SPEC.md says ignored rows get exactly zero gradient (cpp/triton did).
    x = torch.tensor([[0.5, float("nan"), 2.0], [0.1, 0.2, 0.3], [float("inf"), 0.0, 1.0]],
                     requires_grad=True)
    t = torch.tensor([-100, 1, -100])
    loss = momkernels.mom_cross_entropy(x, t, 0.5, label_smoothing=0.1, backend="torch")
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and bool((g[[0, 2]] == 0).all()) and bool(torch.isfinite(g).all())


def test_torch_backend_int32_target_ignore_index_does_not_wrap():
    # reference.py compared int32 targets with ignore_index = 2**32 as if it
    # were 0 (PyTorch wraps the scalar to int32): class-0 rows were ignored.
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2], dtype=torch.int32)
    got = momkernels.mom_cross_entropy(x, t, ignore_index=2**32, reduction="none",
                                       backend="torch")
    want = momkernels.mom_cross_entropy(x, t.long(), reduction="none", backend="torch")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cross_entropy_ignore_index_int64_min():
    # cross_entropy picked o_index = ignore_index - 1, which overflows int64 for
    # ignore_index = -2**63 (RuntimeError from the operator schema).
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    for backend in momkernels.available_backends("cpu"):
        if backend == "triton":
            continue
        got = momkernels.cross_entropy(x, t, ignore_index=-2**63, backend=backend)
        torch.testing.assert_close(got, F.cross_entropy(x, t, ignore_index=-2**63))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_backward_of_empty_batch(reduction, dtype):
    """Regression (found by the long hypothesis profile): the CPU fused
    backward read the first upstream gradient of an empty (0,) grad for
    reduction='none' and N = 0 -- a segfault.  Every backend: an empty
    (0, C) gradient."""
    for backend in BACKENDS:
        x = torch.randn(0, 5, dtype=dtype, requires_grad=True)
        t = torch.zeros(0, dtype=torch.long)
        out = momkernels.mom_cross_entropy(x, t, 0.3, reduction=reduction, backend=backend)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert g.shape == (0, 5) and g.dtype == dtype
