"""momkernels on CUDA tensors: what only a GPU can show -- CUDA-graph capture
and replay, no device->host synchronisation, out-of-range targets that give
NaN instead of a crash, launch counts, determinism, 64-bit offsets, opcheck
and torch.compile(fullgraph=True).  The grids of values and gradients run on
CUDA tensors through conftest.py's ``device`` fixture (test_device_grids.py,
test_mom_loss.py, test_edge_cases.py, test_cross_entropy_parity.py).

Skipped without a GPU.  Out-of-range targets are tried in a subprocess, so a
backend that faults on them cannot take the CUDA context of this process down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import momkernels
from helpers import assert_close
from momkernels import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = "cuda"
CUDA_BACKENDS = momkernels.available_backends(DEV) if torch.cuda.is_available() else []
KERNEL_BACKENDS = [b for b in CUDA_BACKENDS if b != "torch"]
HAS_CPP_CUDA = "cpp" in CUDA_BACKENDS
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

needs_cpp = pytest.mark.skipif(not HAS_CPP_CUDA, reason="momkernels built without CUDA kernels")


def cuda_logits(N: int, C: int, dtype, *, gen, layout: str = "contig", scale: float = 3.0):
    """(N, C) CUDA logits leaf in a memory layout: contig | rowslice (every other
    row) | colslice (every other class) | transposed | offset (storage offset of
    one element: rows not 16-byte aligned) | expand (one row, stride 0)."""
    def rnd(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEV)

    if layout == "contig":
        x = rnd(N, C)
    elif layout == "rowslice":
        x = rnd(2 * N, C)[::2]
    elif layout == "colslice":
        x = rnd(N, 2 * C)[:, ::2]
    elif layout == "transposed":
        x = rnd(C, N).t()
    elif layout == "offset":
        x = rnd(N * C + 1)[1:].view(N, C)
    elif layout == "expand":
        x = rnd(1, C).expand(N, C)
    else:
        raise ValueError(layout)
    return x.detach().requires_grad_(True)


def cuda_targets(N: int, C: int, *, gen, o_index: int = 0, ignore_index: int = -100,
                 dtype=torch.int64, strided: bool = False):
    """NER-like targets: ~70 % o_index, ~15 % ignored, the rest uniform."""
    cls = torch.randint(0, C, (N,), generator=gen)
    u = torch.rand(N, generator=gen)
    t = torch.where(u < 0.7, torch.full_like(cls, min(o_index, C - 1)), cls)
    t = torch.where((u >= 0.7) & (u < 0.85), torch.full_like(cls, ignore_index), t)
    t = t.to(dtype)
    if strided:
        return torch.stack([t, torch.full_like(t, 12345)], dim=-1).to(DEV)[:, 0]
    return t.to(DEV)


def cuda_weight(C: int, *, gen, dtype=torch.float32):
    return (torch.rand(C, generator=gen, dtype=torch.float64) * 2 + 0.25).to(dtype).to(DEV)


# ----------------------------------------------------------------- values and gradients
#
# The grids of values and gradients (dtypes x classes x reductions, options,
# lam extremes, low precision, layouts, N-d input, huge vocabularies, the
# small-C group sizes, -inf masked vocabularies, ignored rows, all-ignored and
# empty batches, confident bf16 rows, parity with F.cross_entropy) are written
# once for every device: test_device_grids.py, test_mom_loss.py,
# test_edge_cases.py and test_cross_entropy_parity.py take conftest.py's
# ``device`` fixture and run on CUDA tensors on a GPU machine.  This file keeps
# what only a GPU can show.


# ----------------------------------------------------------------- GPU-only properties


@pytest.mark.parametrize("C", [9, 32000])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_host_sync(backend, C, gen, monkeypatch):
    monkeypatch.delenv("MOMKERNELS_CHECK", raising=False)
    x = cuda_logits(64, C, torch.bfloat16, gen=gen)
    t = cuda_targets(64, C, gen=gen)
    w = cuda_weight(C, gen=gen)

    def step():
        loss = momkernels.mom_cross_entropy(x, t, 0.175, weight=w, backend=backend)
        (g,) = torch.autograd.grad(loss, x)
        return loss, g

    step()  # warm-up: lazy initialisation, kernel compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("opts", ["plain", "weight+smoothing"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("C", [9, 32000])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_graph_replay(backend, C, reduction, opts, gen):
    """Forward + backward captured once, replayed with new data in the same buffers
    (with class weights and label smoothing too: W = sum w is computed on the device)."""
    N = 64
    x = cuda_logits(N, C, torch.float32, gen=gen)
    t = cuda_targets(N, C, gen=gen)
    kw = dict(weight=cuda_weight(C, gen=gen), label_smoothing=0.1) if opts != "plain" else {}

    def step():
        loss = momkernels.mom_cross_entropy(x, t, 0.175, reduction=reduction, backend=backend,
                                            **kw)
        (g,) = torch.autograd.grad(loss.sum(), x)
        return loss, g

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grad = step()
    for _ in range(3):
        new_x = cuda_logits(N, C, torch.float32, gen=gen)
        new_t = cuda_targets(N, C, gen=gen)
        with torch.no_grad():
            x.copy_(new_x)
        t.copy_(new_t)
        graph.replay()
        torch.cuda.synchronize()
        ref_loss, ref_grad = step()
        assert_close(static_loss, ref_loss, rtol=0, atol=0, name="replayed loss")
        assert_close(static_grad, ref_grad, rtol=0, atol=0, name="replayed grad")


_OOB_SCRIPT = textwrap.dedent("""
    import sys, torch, momkernels
    backend = sys.argv[1]
    for C in (9, 1000):
        for reduction in ("none", "mean", "sum"):
            x = torch.randn(16, C, device="cuda", requires_grad=True)
            t = torch.randint(0, C, (16,), device="cuda")
            t[3] = C + 5
            t[7] = -7
            loss = momkernels.mom_cross_entropy(x, t, 0.5, reduction=reduction, backend=backend)
            (g,) = torch.autograd.grad(loss.sum(), x)
            torch.cuda.synchronize()
            ok = torch.ones(16, dtype=torch.bool, device="cuda")
            ok[3] = ok[7] = False
            assert torch.isnan(g[~ok]).all(), (C, reduction, "the bad rows' gradient is NaN")
            if reduction == "none":
                assert torch.isnan(loss[~ok]).all() and torch.isfinite(loss[ok]).all(), loss
                assert torch.isfinite(g[ok]).all(), (C, "the other rows' gradient")
            else:
                assert torch.isnan(loss), (C, reduction, loss)
    # the context is still usable
    assert float(torch.ones(3, device="cuda").sum()) == 3.0
    print("OK")
""")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_out_of_range_target_gives_nan(backend):
    """In a subprocess: a backend that faults must not take this process's context
    down.  "torch" included: its gather used to index with the bad target (a
    device-side assert)."""
    env = dict(os.environ)
    env.pop("MOMKERNELS_CHECK", None)
    r = subprocess.run([sys.executable, "-c", _OOB_SCRIPT, backend], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0 and "OK" in r.stdout, (
        f"{backend}: out-of-range target crashed or gave no NaN\n{r.stdout}\n{r.stderr[-3000:]}")


@needs_cpp
@pytest.mark.parametrize("C", [9, 1000])
def test_out_of_range_target_gradient_is_nan_row_cpp(C):
    """cpp backend: the bad row's gradient is NaN in every class (documented)."""
    x = torch.randn(8, C, device=DEV, requires_grad=True)
    t = torch.randint(0, C, (8,), device=DEV)
    t[2] = C
    loss = momkernels.mom_cross_entropy(x, t, 0.5, reduction="none", backend="cpp")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert bool(torch.isnan(g[2]).all())
    assert bool(torch.isfinite(g[torch.arange(8, device=DEV) != 2]).all())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_check_targets_raises(backend):
    x = torch.randn(4, 9, device=DEV)
    t = torch.tensor([0, 1, 9, 2], device=DEV)
    with pytest.raises(IndexError):
        momkernels.mom_cross_entropy(x, t, 0.5, backend=backend, check_targets=True)


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [9, 1000, 32000])
def test_deterministic_cpp(dtype, C, gen):
    x = cuda_logits(257, C, dtype, gen=gen)
    t = cuda_targets(257, C, gen=gen)
    w = cuda_weight(C, gen=gen)
    runs = []
    for _ in range(3):
        loss = momkernels.mom_cross_entropy(x, t, 0.2, weight=w, backend="cpp",
                                            label_smoothing=0.1)
        (g,) = torch.autograd.grad(loss, x)
        runs.append((loss, g))
    for loss, g in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(g, runs[0][1])


def _kernels_launched(fn) -> list[str]:
    """Names of the GPU kernels that one call of ``fn`` launches (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    skip = ("memcpy", "memset", "activity buffer")
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
            and not any(s in e.name.lower() for s in skip)]


@needs_cpp
@pytest.mark.parametrize("reduction,fwd_max", [("mean", 2), ("sum", 2), ("none", 1)])
def test_launch_counts_ner_shape(reduction, fwd_max, gen):
    """8192 x 9 (NER): forward <= 2 launches, backward 1."""
    x = cuda_logits(8192, 9, torch.bfloat16, gen=gen).detach()
    t = cuda_targets(8192, 9, gen=gen)
    args = (0.175, 0, -100, "ce", 2.0, 1.0, 0.01, 0.0)
    out = {}

    def fwd():
        out["r"] = torch.ops.momkernels.mom_loss_fwd(x, t, None, *args, reduction, "valid")

    names = _kernels_launched(fwd)
    assert len(names) <= fwd_max, names
    loss, stats, coef = out["r"]
    g = torch.ones_like(loss)

    def bwd():
        torch.ops.momkernels.mom_loss_bwd(g, x, t, None, stats, coef, 0, -100, "ce", 2.0, 1.0,
                                          0.01, 0.0)

    names = _kernels_launched(bwd)
    assert len(names) == 1, names


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_int64_offsets(backend, gen):
    """More than 2^31 logits in one tensor (N x C > 2^31): offsets must be 64-bit."""
    N, C = 16400, 131072  # 2.15e9 elements, 4.3 GB in bfloat16
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs ~24 GiB of free GPU memory")
    x = torch.randn(N, C, device=DEV, dtype=torch.bfloat16)
    t = torch.randint(0, C, (N,), device=DEV)
    loss = momkernels.mom_cross_entropy(x, t, 0.5, reduction="none", backend=backend)
    tail = slice(N - 3, N)
    ref = momkernels.reference.mom_cross_entropy(x[tail], t[tail], 0.5, reduction="none",
                                                 compute_dtype=torch.float64)
    assert_close(loss[tail], ref, rtol=2**-7, atol=1e-6, name="last rows")
    xg = x.requires_grad_(True)
    loss = momkernels.mom_cross_entropy(xg, t, 0.5, reduction="sum", backend=backend)
    (g,) = torch.autograd.grad(loss, xg)
    last = g[-1].float()
    assert bool(torch.isfinite(last).all()) and abs(float(last.sum())) < 1e-2
    del g, x, xg


# ----------------------------------------------------------------- torch.library / compile


def _sample_inputs():
    g = torch.Generator().manual_seed(0)
    out = []
    for C, dtype, red in [(9, torch.float32, "mean"), (1000, torch.bfloat16, "none")]:
        x = (torch.randn(33, C, generator=g) * 3).to(dtype).to(DEV).requires_grad_(True)
        t = cuda_targets(33, C, gen=g)
        w = cuda_weight(C, gen=g)
        out.append((x, t, w, 0.3, 0, -100, "ce", 2.0, 1.0, 0.01, 0.1, red, "valid"))
        out.append((x, t, None, 0.0, 1, -100, "focal", 2.0, 1.0, 0.01, 0.0, "sum", "rows"))
    return out


@needs_cpp
@pytest.mark.parametrize("i", range(4))
def test_opcheck_fwd(i):
    args = _sample_inputs()[i]
    torch.library.opcheck(torch.ops.momkernels.mom_loss_fwd.default, args)


@needs_cpp
@pytest.mark.parametrize("i", range(4))
def test_opcheck_bwd(i):
    (x, t, w, lam, o, ign, loss, gamma, al, sm, ls, red, norm) = _sample_inputs()[i]
    out, stats, coef = torch.ops.momkernels.mom_loss_fwd(
        x.detach(), t, w, lam, o, ign, loss, gamma, al, sm, ls, red, norm)
    grad = torch.ones_like(out)
    torch.library.opcheck(torch.ops.momkernels.mom_loss_bwd.default,
                          (grad, x.detach(), t, w, stats, coef, o, ign, loss, gamma, al, sm, ls))


@pytest.mark.parametrize("C", [9, 32000])  # small-C and large-C kernels
@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["auto"])
def test_compile_fullgraph(backend, C, gen):
    """Also backend "auto" (which asks whether the extension has CUDA kernels
    while Dynamo traces: that must not call an operator returning a string)."""
    torch._dynamo.reset()
    N = 48 if C <= 128 else 8
    x = cuda_logits(N, C, torch.bfloat16, gen=gen)
    t = cuda_targets(N, C, gen=gen)

    def f(x, t):
        return momkernels.mom_cross_entropy(x, t, 0.175, backend=backend)

    cf = torch.compile(f, fullgraph=True)
    out = cf(x, t)
    (g,) = torch.autograd.grad(out, x)
    ref = f(x, t)
    (rg,) = torch.autograd.grad(ref, x)
    assert_close(out, ref, rtol=2**-7, atol=1e-6, name="compiled loss")
    assert_close(g, rg, rtol=2**-7, atol=1e-5 * float(rg.abs().max()), name="compiled grad")


@needs_cpp
def test_build_info_reports_cuda():
    assert ops.has_cuda()
    assert "cpp" in momkernels.available_backends(DEV)
