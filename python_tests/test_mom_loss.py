"""Values and gradients of every CPU backend against the float64 oracle
(``reference.mom_cross_entropy(..., compute_dtype=torch.float64)``).

Two grids:

* ``test_options_grid``: the full product backend x dtype x loss (ce, ce with
  label smoothing, focal, dice) x reduction/mom_norm x lam x weight on one
  small NER-sized batch with ~30 % ignored rows and many o_index rows;
* ``test_shapes_pairwise``: every *pair* of values of dtype, shape (C from 1
  to 70001, odd N, (C,), (N, C, d1), (N, C, d1, d2)), memory layout, target
  kind (ignored rows, NER-like, custom ignore_index, int32, strided), loss,
  reduction, lam and weight appears in at least one case (a greedy pairwise
  covering array, fixed seed), for every backend.

Both run on every device (conftest.py's ``device``: CUDA tensors on a GPU
machine, with the CUDA backends), so a GPU run checks the same cases; the
shapes that matter only to the CUDA and Triton kernels' regimes are in
test_device_grids.py.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from helpers import (DTYPES, backend_params, check_against_oracle, make_logits, make_targets,
                     make_weight, num_classes, target_shape)

LAMS = [0.0, 0.175, 1.0]
# (loss, extra kwargs)
LOSS_CFGS = {
    "ce": ("ce", {}),
    "ce_ls": ("ce", {"label_smoothing": 0.1}),
    "focal": ("focal", {}),
    # gamma >= 1: (1 - p)^gamma has a finite derivative at p = 1 (C = 1 rows);
    # gamma < 1 at p = 1 is test_saturated_rows_have_zero_gradient's
    "focal_g1.5": ("focal", {"gamma": 1.5}),
    "dice": ("dice", {}),
    "dice_a2": ("dice", {"dice_alpha": 2.0, "dice_smooth": 0.5}),
}
# (reduction, mom_norm); mom_norm only matters for "mean"; 12.5 is a number
# (the paper's sentences x M), smaller than N = 33 rows so that it differs
# from "rows" and weighs the O rows more than "valid" does
RED_CFGS = [("mean", "valid"), ("mean", "rows"), ("mean", 12.5), ("sum", "valid"),
            ("none", "valid")]


def _upstream(reduction, tshape, dtype, gen, device="cpu"):
    if reduction != "none":
        return None
    # a non-trivial upstream gradient for per-row losses, rounded to dtype
    return (torch.rand(tshape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)


# ------------------------------------------------------------- options grid


@pytest.mark.parametrize("use_weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("lam", LAMS)
@pytest.mark.parametrize("red", RED_CFGS, ids=lambda r: "-".join(map(str, r)))
@pytest.mark.parametrize("loss_cfg", ["ce", "ce_ls", "focal", "dice"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_options_grid(backend, dtype, loss_cfg, red, lam, use_weight, device, gen):
    # C = 9 (a NER tag set): the CPU tile path (C <= 64), the CUDA small-C path
    # (C <= 128, 4 lanes per row), Triton's tile regime (C <= 128)
    N, C, o_index = 33, 9, 2
    x = make_logits((N, C), dtype, gen=gen, device=device)
    # half NER-like (o_index often), half uniform with 30 % ignored rows
    t = torch.cat([
        make_targets((17,), C, gen=gen, kind="ner", o_index=o_index, device=device),
        make_targets((16,), C, gen=gen, kind="random", ignore_frac=0.3, device=device),
    ])
    assert (t == -100).any() and (t == o_index).any() and ((t != o_index) & (t >= 0)).any()
    loss, extra = LOSS_CFGS[loss_cfg]
    reduction, mom_norm = red
    w = make_weight(C, dtype, gen=gen, device=device) if use_weight else None
    check_against_oracle(
        x, t, upstream=_upstream(reduction, t.shape, dtype, gen, device), backend=backend, lam=lam,
        o_index=o_index, weight=w, loss=loss, reduction=reduction, mom_norm=mom_norm, **extra)


# ------------------------------------------------------------- pairwise grid

SHAPES = [
    # C = 1, 2: degenerate rows (p_y = 1; MRC start/end); 9, 37: NER tag sets on
    # the CPU tile path (C <= 64), the CUDA small-C path (C <= 128: 4 and 16
    # lanes per row) and Triton's tile regime (C <= 128); N = 257: more rows than
    # one CPU tile block (256)
    (1, 1), (7, 1), (1, 2), (33, 2), (7, 9), (257, 9), (1, 37), (33, 37), (257, 37),
    # C = 1000: the CPU row path (C > 64, one chunk of 2048), one CUDA block per
    # row (C > 128), Triton's row regime (C > 128, one chunk); C = 70001: 35 CPU
    # chunks, 9 Triton chunks of 8192 (the last one partial)
    (7, 1000), (33, 1000), (3, 70001), (1, 70001),
    (9,), (1000,),                # (C,) with a 0-dim target
    (3, 9, 5), (2, 37, 3, 5),     # (N, C, d1), (N, C, d1, d2)
    (5, 1000, 3),
]
LAYOUTS = ["contig", "transposed", "colslice", "rowslice", "expand"]
TARGETS = ["random30", "ner", "ignore_custom", "ignore_inside", "int32", "strided",
           "none_ignored"]

FACTORS = {
    "dtype": DTYPES,
    "shape": SHAPES,
    "layout": LAYOUTS,
    "targets": TARGETS,
    "loss": list(LOSS_CFGS),
    "red": RED_CFGS,
    "lam": LAMS,
    "weight": [False, True],
}


def _pairwise(factors: dict, seed: int = 0, candidates: int = 60) -> list[dict]:
    """Greedy covering array: every pair of values of two factors is in some row."""
    rng = random.Random(seed)
    names = list(factors)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i in range(len(factors[names[a]])):
            for j in range(len(factors[names[b]])):
                uncovered.add((a, i, b, j))

    def pairs(row):
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(range(len(names)), 2)}

    rows = []
    while uncovered:
        # seed each candidate with an uncovered pair so that progress is guaranteed
        a, i, b, j = next(iter(sorted(uncovered)))
        best, best_gain = None, -1
        for _ in range(candidates):
            row = [rng.randrange(len(factors[n])) for n in names]
            row[a], row[b] = i, j
            gain = len(pairs(row) & uncovered)
            if gain > best_gain:
                best, best_gain = row, gain
        uncovered -= pairs(best)
        rows.append({n: factors[n][k] for n, k in zip(names, best)})
    return rows


PAIRWISE_CASES = _pairwise(FACTORS)


def _case_id(c):
    shape = "x".join(map(str, c["shape"]))
    return (f"{str(c['dtype']).replace('torch.', '')}-{shape}-{c['layout']}-{c['targets']}-"
            f"{c['loss']}-{'-'.join(map(str, c['red']))}-lam{c['lam']}-{'w' if c['weight'] else 'now'}")


def _is_big(c):
    return torch.Size(c["shape"]).numel() >= 100_000


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=_case_id(c), marks=[pytest.mark.slow] if _is_big(c) else [])
     for c in PAIRWISE_CASES])
@pytest.mark.parametrize("backend", backend_params(heavy=True, devices=True))
def test_shapes_pairwise(backend, case, device, gen):
    dtype, shape = case["dtype"], case["shape"]
    C = num_classes(shape)
    tshape = target_shape(shape)
    o_index = (C - 1) // 2
    ignore_index = -100
    kind, tdtype, strided = "random", torch.int64, False
    if case["targets"] == "ner":
        kind = "ner"
    elif case["targets"] == "ignore_custom":
        ignore_index = -1
    elif case["targets"] == "ignore_inside":
        # an ignore_index that is also a class index, as PyTorch allows
        ignore_index = o_index + 1 if o_index + 1 < C else C
    elif case["targets"] == "int32":
        tdtype = torch.int32
    elif case["targets"] == "strided":
        strided = True
    elif case["targets"] == "none_ignored":
        kind = "none_ignored"
    x = make_logits(shape, dtype, gen=gen, layout=case["layout"], device=device)
    t = make_targets(tshape, C, gen=gen, kind=kind, o_index=o_index, ignore_index=ignore_index,
                     dtype=tdtype, strided=strided, device=device)
    loss, extra = LOSS_CFGS[case["loss"]]
    reduction, mom_norm = case["red"]
    w = make_weight(C, dtype, gen=gen, device=device) if case["weight"] else None
    check_against_oracle(
        x, t, upstream=_upstream(reduction, t.shape, dtype, gen, device), backend=backend,
        lam=case["lam"], o_index=o_index, ignore_index=ignore_index, weight=w, loss=loss,
        reduction=reduction, mom_norm=mom_norm, **extra)


def test_pairwise_covers_the_issue_list():
    """The covering array really contains what the issue asks for."""
    seen = {k: {repr(c[k]) for c in PAIRWISE_CASES} for k in FACTORS}
    for k, values in FACTORS.items():
        assert seen[k] == {repr(v) for v in values}, k
    Cs = {num_classes(c["shape"]) for c in PAIRWISE_CASES}
    assert {1, 2, 9, 37, 1000, 70001} <= Cs
    Ns = {c["shape"][0] for c in PAIRWISE_CASES if len(c["shape"]) == 2}
    assert {1, 7, 33, 257} <= Ns


# ------------------------------------------------------------- big shapes


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params())
def test_vocabulary_sized_rows(backend, dtype, gen):
    """C = 262,144 (docs/spec.md: "up to at least"), LM-vocabulary rows, with smoothing."""
    N, C = 2, 262_144
    x = make_logits((N, C), dtype, gen=gen)
    t = torch.tensor([5, C - 1])
    check_against_oracle(x, t, backend=backend, lam=0.175, o_index=5, label_smoothing=0.1,
                         weight=make_weight(C, torch.float32, gen=gen))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ce", "focal", "dice"])
@pytest.mark.parametrize("backend", backend_params())
def test_many_rows(backend, loss, gen):
    """Many row blocks (several parallel tasks) with NER-sized C."""
    N, C = 20_011, 9
    x = make_logits((N, C), torch.float32, gen=gen)
    t = make_targets((N,), C, gen=gen, kind="ner", o_index=0)
    check_against_oracle(x, t, backend=backend, lam=0.175, o_index=0, loss=loss,
                         weight=make_weight(C, torch.float32, gen=gen))
