"""Regression tests for bugs found after the fact (one test per bug)."""

import pytest
import torch
import torch.nn.functional as F

import momkernels


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
