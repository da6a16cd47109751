"""Run momkernels' CUDA kernels on the CPU (cuda_shim.h) against the float64
reference and the C++ CPU operator.  For development on machines without a
GPU; it checks indexing, alignment handling, reductions and per-row math of
the kernel code, not its behaviour on real hardware.

    CUDA_HOME=/usr/local/cuda python csrc/cuda/host_emulation/check_kernels.py [-k PATTERN]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch
from torch.utils.cpp_extension import load

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "python_tests"))

from momkernels import reference  # noqa: E402
from momkernels.options import mom_norm_args  # noqa: E402

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")


def build():
    return load(
        name="momk_cuda_emulated",
        sources=[os.path.join(HERE, "emulated_ops.cpp")],
        extra_include_paths=[os.path.join(CUDA_HOME, "include"), os.path.join(ROOT, "csrc")],
        extra_cflags=["-O1", "-std=c++20", "-pthread", "-DMOMK_CUDA_EMULATION",
                      "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-Wno-unused-function"],
        extra_ldflags=["-pthread"],
        build_directory=os.environ.get("MOMK_EMU_BUILD") or None,
        verbose=False,
    )


def tol(dtype):
    return {torch.float64: (1e-9, 1e-12), torch.float32: (1e-5, 1e-6)}.get(
        dtype, (torch.finfo(dtype).eps, 1e-6))


def close(a, e, rtol, atol, what):
    a = a.detach().double()
    e = e.detach().double()
    nan_ok = torch.equal(torch.isnan(a), torch.isnan(e))
    fin = ~torch.isnan(e)
    diff = (a[fin] - e[fin]).abs()
    bound = atol + rtol * e[fin].abs()
    if not nan_ok or bool((diff > bound).any()):
        i = int((diff - bound).argmax()) if diff.numel() else -1
        raise AssertionError(f"{what}: nan pattern ok={nan_ok}; worst {a[fin].reshape(-1)[i]} vs "
                             f"{e[fin].reshape(-1)[i]} (max abs err {float(diff.max()):.3g})")


def logits(N, C, dtype, layout, g):
    def rnd(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * 3).to(dtype)
    if layout == "contig":
        return rnd(N, C)
    if layout == "offset":
        return rnd(N * C + 1)[1:].view(N, C)
    if layout == "offset3":
        return rnd(N * C + 3)[3:].view(N, C)
    if layout == "rowslice":
        return rnd(2 * N, C)[::2]
    if layout == "colslice":
        return rnd(N, 2 * C)[:, ::2]
    if layout == "transposed":
        return rnd(C, N).t()
    raise ValueError(layout)


def targets(N, C, g, dtype=torch.int64, bad=False):
    cls = torch.randint(0, C, (N,), generator=g)
    u = torch.rand(N, generator=g)
    t = torch.where(u < 0.5, torch.full_like(cls, min(1, C - 1)), cls)
    t = torch.where((u >= 0.5) & (u < 0.7), torch.full_like(cls, -100), t)
    if bad and N > 3:
        t[2] = C + 3
        t[N - 1] = -5
    return t.to(dtype)


def run_case(emu, N, C, dtype, layout, opts, lam, reduction, mom_norm, weighted, tdtype, g,
             bad=False):
    x = logits(N, C, dtype, layout, g)
    t = targets(N, C, g, tdtype, bad)
    w = (torch.rand(C, generator=g, dtype=torch.float64) * 2 + 0.25).float() if weighted else None
    args = (lam, 1 if C > 1 else 0, -100, opts.get("loss", "ce"), opts.get("gamma", 2.0),
            opts.get("dice_alpha", 1.0), opts.get("dice_smooth", 0.01),
            opts.get("label_smoothing", 0.0))
    norm_args = mom_norm_args(mom_norm)  # ("fixed", number) for a number
    out, stats, coef = emu.fwd(x, t, w, *args, reduction, *norm_args)
    o_index = args[1]
    # reference value and gradient (float64)
    x64 = x.detach().double().requires_grad_(True)
    ref = reference.mom_cross_entropy(
        x64, torch.where((t < 0) | (t >= C), torch.full_like(t, -100), t) if bad else t, lam,
        o_index=o_index, ignore_index=-100, weight=None if w is None else w.double(),
        loss=args[3], gamma=args[4], dice_alpha=args[5], dice_smooth=args[6],
        label_smoothing=args[7], reduction=reduction, mom_norm=mom_norm,
        compute_dtype=torch.float64)
    # the upstream gradient, rounded to the logits' dtype as autograd would pass it
    up = (torch.randn(ref.shape, generator=g, dtype=torch.float64) if reduction == "none"
          else torch.tensor(1.7, dtype=torch.float64)).to(dtype)
    (rg,) = torch.autograd.grad(ref, x64, up.double())
    rtol, atol = tol(dtype)
    if bad:
        if reduction == "none":
            bad_rows = (t != -100) & ((t < 0) | (t >= C))
            assert bool(torch.isnan(out[bad_rows]).all()), out
            close(out[~bad_rows], ref[~bad_rows], rtol, atol, "loss (good rows)")
        else:
            assert bool(torch.isnan(out)), out
    else:
        close(out, ref, rtol, atol, "loss")
    # CPU operator: same stats
    if not bad:
        cout, cstats, ccoef = torch.ops.momkernels.mom_loss_fwd(x, t, w, *args, reduction,
                                                                *norm_args)
        valid = t != -100
        close(stats[valid], cstats[valid], 1e-5 if dtype != torch.float64 else 1e-12, 1e-6,
              "stats vs cpu")
        close(coef, ccoef, 1e-6, 0, "coef vs cpu")
    grad = emu.bwd(up, x, t, w, stats, coef, o_index, -100, *args[3:])
    scale = float(rg.abs().max()) if rg.numel() else 1.0
    if bad:
        bad_rows = (t != -100) & ((t < 0) | (t >= C))
        assert bool(torch.isnan(grad[bad_rows]).all())
        if reduction != "mean":
            close(grad[~bad_rows], rg[~bad_rows], rtol, 1e-5 * scale, "grad (good rows)")
        return
    close(grad, rg, rtol, (1e-5 if dtype != torch.float64 else 1e-9) * scale, "grad")
    assert bool((grad[t == -100] == 0).all()), "ignored rows must have zero gradient"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    t0 = time.time()
    emu = build()
    import momkernels  # noqa: F401  -- CPU operator for the stats comparison
    print(f"built in {time.time() - t0:.0f}s", flush=True)
    g = torch.Generator().manual_seed(0)
    cases = []
    # shapes x dtypes x layouts (ce, mean)
    for C, dtype, layout in itertools.product(
            [1, 2, 5, 9, 16, 17, 37, 64, 100, 128, 129, 1000, 4099],
            [torch.float16, torch.bfloat16, torch.float32, torch.float64],
            ["contig", "offset", "offset3", "rowslice", "colslice", "transposed"]):
        if C > 1000 and layout in ("rowslice", "transposed", "offset3") and dtype != torch.bfloat16:
            continue
        N = 37 if C <= 128 else 3
        cases.append((N, C, dtype, layout, {}, 0.3, "mean", "valid", False, torch.int64))
    # every lane-group size of the small-C path (launch.h small_group: G = 2 for
    # C = 5..8, 8 for 17..32, 32 for 65..128) and the switch at C = 128 / 129
    for C, dtype in itertools.product([6, 7, 8, 24, 31, 32, 65, 127],
                                      [torch.bfloat16, torch.float32]):
        cases.append((301, C, dtype, "contig", {"label_smoothing": 0.05}, 0.3, "mean", "valid",
                      True, torch.int64))
    # options x reductions x lam (fp32)
    opts_list = [{}, {"loss": "focal"}, {"loss": "focal", "gamma": 0.0}, {"loss": "dice"},
                 {"loss": "dice", "dice_alpha": 0.0}, {"label_smoothing": 0.1},
                 {"label_smoothing": 1.0}]
    for C, opts, red, lam, weighted, norm in itertools.product(
            [9, 37, 300], opts_list, ["mean", "sum", "none"], [0.0, 0.175, 1.0], [False, True],
            ["valid", "rows", 1000.0]):
        if norm != "valid" and red != "mean":
            continue
        N = 40 if C <= 128 else 3
        cases.append((N, C, torch.float32, "contig", opts, lam, red, norm, weighted, torch.int32))
    # large C, all paths of the head/body/tail split
    for C, dtype, layout in itertools.product([20000], [torch.bfloat16, torch.float32],
                                              ["contig", "offset", "colslice"]):
        cases.append((2, C, dtype, layout, {"label_smoothing": 0.1}, 0.5, "sum", "valid", True,
                      torch.int64))
    if a.quick:
        cases = cases[::7]
    failures = 0
    for k, case in enumerate(cases):
        try:
            run_case(emu, *case, g)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL {case}: {e}", flush=True)
    # out-of-range targets
    for C, red in itertools.product([9, 300], ["none", "mean", "sum"]):
        try:
            run_case(emu, 8 if C <= 128 else 5, C, torch.float32, "contig", {}, 0.5, red, "valid",
                     False, torch.int64, g, bad=True)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL bad-target C={C} {red}: {e}", flush=True)
    # empty batch
    out, stats, coef = emu.fwd(torch.zeros(0, 9), torch.zeros(0, dtype=torch.int64), None, 0.5, 0,
                               -100, "ce", 2.0, 1.0, 0.01, 0.0, "mean", "valid", 0.0)
    assert torch.isnan(out) and coef.shape == (2,), (out, coef)
    print(f"{len(cases)} cases, {failures} failures, {time.time() - t0:.0f}s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
