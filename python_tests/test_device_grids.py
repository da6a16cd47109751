"""Values and gradients against the float64 reference on the shapes that the
kernels' regimes make interesting, written once for every device
(conftest.py's ``device``: "cpu" always, "cuda" on a GPU machine), every
backend available there (a pair that cannot run is skipped).

These grids used to exist for CUDA tensors only (test_cuda.py); now a CPU run
checks them too, and a GPU run checks the CPU grids of test_mom_loss.py,
test_edge_cases.py and test_cross_entropy_parity.py.  The regimes, by C:

* CPU (csrc/cpu/kernel.h): tile path C <= 64 (kTileMaxC; rows in vector
  lanes, fused forward + gradient under autograd), row path above (chunks of
  2048 classes, online softmax);
* CUDA (csrc/cuda/launch.h): small-C path C <= 128 (kSmallMaxC; a group of
  G = next_pow2(ceil(C / 4)) lanes per row: G changes at C = 5, 9, 17, 33,
  65), one block per row above (128 threads up to C = 2048, 256 up to 16384,
  512 above);
* Triton (momkernels/triton/kernels.py): tile regime C <= 128, row regime
  above (one row per program, chunks of 8192 classes).

On the CPU, the Triton backend runs in its interpreter (~3 ms per program
instance): the big grids mark it ``slow``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import (DTYPES, assert_close, backend_params, check_against_oracle, make_logits,
                     make_targets, make_weight)

# C = 1: p_y = 1 (degenerate row); 9, 37: NER tag sets (CPU tile path, CUDA
# small-C path with 4 and 16 lanes per row, Triton tile regime); 1000: every
# backend's row kernel (one chunk); 32000, 128256: LM vocabularies (CPU: 16 and
# 63 chunks; CUDA: 512 threads per row; Triton: 4 and 16 chunks of 8192)
CLASSES = [1, 9, 37, 1000, 32000, 128256]


def rows_for(C: int) -> int:
    # 300 rows at small C: more than one CPU tile block (256 rows) and several
    # CUDA small-C blocks; few rows of a vocabulary keep the float64 oracle cheap
    return 300 if C <= 64 else (24 if C <= 4096 else 5)


def ner_targets(N: int, C: int, *, gen, o_index: int = 0, ignore_index: int = -100,
                dtype=torch.int64, strided: bool = False, device="cpu"):
    """NER-like targets: ~70 % o_index, ~15 % ignored, the rest uniform."""
    cls = torch.randint(0, C, (N,), generator=gen)
    u = torch.rand(N, generator=gen)
    t = torch.where(u < 0.7, torch.full_like(cls, min(o_index, C - 1)), cls)
    t = torch.where((u >= 0.7) & (u < 0.85), torch.full_like(cls, ignore_index), t)
    t = t.to(dtype)
    if strided:
        return torch.stack([t, torch.full_like(t, 12345)], dim=-1).to(device)[:, 0]
    return t.to(device)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("C", CLASSES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_dtypes_classes_reductions(backend, dtype, C, reduction, device, gen):
    N = rows_for(C)
    x = make_logits((N, C), dtype, gen=gen, device=device)
    t = ner_targets(N, C, gen=gen, o_index=min(2, C - 1), device=device)
    up = None
    if reduction == "none":
        up = (torch.rand(N, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    check_against_oracle(x, t, upstream=up, backend=backend, lam=0.175, o_index=min(2, C - 1),
                         reduction=reduction, name=f"{backend} {device} {dtype} C={C} {reduction}")


OPTIONS = [
    dict(loss="ce"),
    dict(loss="focal"),
    dict(loss="focal", gamma=0.0),
    dict(loss="focal", gamma=0.5),
    dict(loss="dice"),
    dict(loss="dice", dice_alpha=0.0, dice_smooth=1.0),
    dict(loss="dice", dice_alpha=2.0),
    dict(loss="ce", label_smoothing=0.1),
    dict(loss="ce", label_smoothing=1.0),
    dict(loss="ce", weighted=True),
    dict(loss="ce", weighted=True, label_smoothing=0.2),
    dict(loss="focal", weighted=True),
    dict(loss="dice", weighted=True),
    dict(loss="ce", mom_norm="rows"),
    dict(loss="ce", weighted=True, mom_norm="rows"),
]


def _opts_id(d):
    return "-".join(f"{k}={v}" for k, v in d.items())


def _check_options(backend, device, C, opts, reduction, lam, gen, dtype=torch.float32):
    opts = dict(opts)
    weighted = opts.pop("weighted", False)
    N = rows_for(C)
    x = make_logits((N, C), dtype, gen=gen, device=device)
    t = ner_targets(N, C, gen=gen, o_index=1, device=device)
    w = make_weight(C, torch.float32, gen=gen, device=device) if weighted else None
    up = None
    if reduction == "none":
        up = (torch.rand(N, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    check_against_oracle(x, t, upstream=up, backend=backend, lam=lam, o_index=1, weight=w,
                         reduction=reduction, name=f"{backend} {device} C={C} {opts} {reduction} "
                         f"lam={lam}", **opts)


# C = 9: tile / small-C kernels; 1000: row kernels in one chunk (CPU: one of
# 2048, Triton: one of 8192); 32000: several chunks on every backend
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS, ids=_opts_id)
@pytest.mark.parametrize("C", [9, 1000, 32000])
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_options(backend, C, opts, reduction, device, gen):
    _check_options(backend, device, C, opts, reduction, 0.175, gen)


# lam = 0 (pure MoM term) and lam = 1 (plain loss): the zero-coefficient rule;
# C = 9 and 32000: the small-C and the vocabulary kernels
@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[1], OPTIONS[7], OPTIONS[10], OPTIONS[13]],
                         ids=_opts_id)
@pytest.mark.parametrize("C", [9, 32000])
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_lam_extremes(backend, C, opts, reduction, lam, device, gen):
    _check_options(backend, device, C, opts, reduction, lam, gen)


LOW_PRECISION_OPTIONS = [OPTIONS[i] for i in (1, 4, 7, 9, 10, 12)]  # focal, dice, smoothing, weights


@pytest.mark.parametrize("opts", LOW_PRECISION_OPTIONS, ids=_opts_id)
@pytest.mark.parametrize("C", [9, 32000])  # small-C and vocabulary kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_options_low_precision(backend, dtype, C, opts, device, gen):
    """The options (weights, smoothing, focal, dice) with float16 / bfloat16 logits."""
    _check_options(backend, device, C, opts, "mean", 0.175, gen, dtype=dtype)


# C = 9, 37: small-C kernels; 1000: row kernels; 32001: a vocabulary whose rows
# are not a multiple of 16 bytes (CUDA's vector accesses); "offset": rows not
# 16-byte aligned at all
@pytest.mark.parametrize("layout", ["contig", "rowslice", "colslice", "transposed", "offset",
                                    "expand"])
@pytest.mark.parametrize("C", [9, 37, 1000, 32001])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_layouts(backend, dtype, C, layout, device, gen):
    N = rows_for(C)
    x = make_logits((N, C), dtype, gen=gen, layout=layout, device=device)
    t = ner_targets(N, C, gen=gen, dtype=torch.int32, strided=True, device=device)
    check_against_oracle(x, t, backend=backend, lam=0.3, reduction="mean",
                         name=f"{backend} {device} {layout} C={C}")


@pytest.mark.parametrize("C", [9, 1000])  # small-C and row kernels
@pytest.mark.parametrize("backend", backend_params(devices=True))
def test_nd_input_and_upstream(backend, C, device, gen):
    """(N, C, d) logits and a non-trivial upstream gradient for 'none'."""
    x = (torch.randn(4, C, 7, generator=gen) * 3).to(device).requires_grad_(True)
    t = ner_targets(28, C, gen=gen, device=device).reshape(4, 7)
    up = torch.randn(4, 7, generator=gen).to(device)
    check_against_oracle(x, t, upstream=up, backend=backend, lam=0.4, reduction="none",
                         name=f"{backend} {device} nd")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_huge_vocabulary(backend, dtype, device, gen):
    """C = 262,144 (docs/spec.md's minimum maximum): 128 CPU chunks, 32 Triton chunks."""
    x = make_logits((3, 262144), dtype, gen=gen, device=device)
    t = torch.tensor([0, 262143, 131071], device=device)
    check_against_oracle(x, t, backend=backend, lam=0.5, reduction="sum",
                         name=f"{backend} {device} C=262144")


# Every lane-group size of the CUDA small-C path (G = 2 for C = 5..8, 8 for
# 17..32, 32 for 65..128: launch.h's small_group) and its switch to one block
# per row at C = 129, which is also Triton's tile/row switch (128); C = 64 / 65
# is the CPU's tile/row switch (kTileMaxC).
SMALL_C = [5, 6, 7, 8, 17, 24, 31, 32, 64, 65, 100, 127, 128, 129]


@pytest.mark.parametrize("C", SMALL_C)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_small_c_group_sizes(backend, dtype, C, device, gen):
    N = 301  # not a multiple of any rows-per-block (CPU tile block: 256 rows)
    x = make_logits((N, C), dtype, gen=gen, device=device)
    t = ner_targets(N, C, gen=gen, o_index=min(3, C - 1), device=device)
    w = make_weight(C, torch.float32, gen=gen, device=device)
    check_against_oracle(x, t, backend=backend, lam=0.3, o_index=min(3, C - 1), weight=w,
                         label_smoothing=0.05, reduction="mean",
                         name=f"{backend} {device} {dtype} C={C}")


# Vocabularies padded and masked with -inf (e.g. 65536 + 64): whole chunks of
# -inf (Triton's 8192-class chunks, the CPU's 2048-class chunks, a CUDA
# thread's 16-byte packs).
NEG_INF_MASKS = {
    "C=300, classes 0-3": (300, slice(0, 4)),
    "C=8200, last 8": (8200, slice(8192, 8200)),
    "C=20000, chunk 8192-16383": (20000, slice(8192, 16384)),
    "C=65600, padding 65536-65599": (65600, slice(65536, 65600)),
}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("mask", list(NEG_INF_MASKS))
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_neg_inf_masked_logits(backend, mask, label_smoothing, device, gen):
    """Against the float64 reference and PyTorch: finite losses (+inf with label
    smoothing, as PyTorch) and finite gradients."""
    C, masked = NEG_INF_MASKS[mask]
    x = (torch.randn(4, C, generator=gen) * 3).to(device)
    x[:, masked] = -float("inf")
    x.requires_grad_(True)
    t = torch.tensor([5, C // 2 if C // 2 < masked.start or C // 2 >= masked.stop else 6, 7,
                      -100], device=device)
    out, grad = check_against_oracle(x, t, backend=backend, lam=1.0, reduction="none",
                                     label_smoothing=label_smoothing,
                                     name=f"{backend} {device} {mask}")
    want = F.cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing)
    assert_close(out, want, rtol=1e-5, atol=1e-6, name=f"{backend} {mask} loss vs PyTorch")
    assert bool(torch.isfinite(grad).all())
