"""Regression tests for bugs found after the fact (one test per bug)."""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import momkernels
from helpers import BACKENDS, assert_close
from momkernels import backends, ops, reference


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
    # docs/spec.md says ignored rows get exactly zero gradient (cpp/triton did).
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


def _confident_rows_float64(x, t, loss, gamma=2.0, dice_alpha=1.0, dice_smooth=0.01):
    """Per-row focal / dice loss (docs/spec.md §4) of float64 rows whose target
    is their largest logit, without cancellation: r = sum_{c != y}
    exp(x_c - x_y) <= C - 1, log p_y = -log1p(r), q = 1 - p_y = r / (1 + r)."""
    d = x - x.gather(1, t[:, None])
    r = torch.where(F.one_hot(t, x.shape[1]).bool(), 0.0, d.exp()).sum(1)
    lp, q, p = -torch.log1p(r), r / (1 + r), 1 / (1 + r)
    if loss == "focal":
        return -q**gamma * lp
    a = q**dice_alpha * p
    return 1 - (2 * a + dice_smooth) / (a + 1 + dice_smooth)


@pytest.mark.parametrize("loss,kw", [("focal", {}), ("focal", {"gamma": 0.5}), ("dice", {}),
                                     ("dice", {"dice_alpha": 0.5})], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_confident_focal_and_dice_rows_fp32(backend, loss, kw):
    # reference.py (backend "torch") took q = 1 - p_y from float32 log_softmax,
    # whose log p_y = -log(1 + r) rounds 1 + r: every part of q = r / (1 + r)
    # below float32's epsilon was lost (for logits of scale 10, 6e-4 absolute
    # on a dice row of ~1 with dice_alpha = 0.5, and focal values of tiny q
    # wrong by several times themselves).  The kernels form log p_y =
    # -log1p(r); so does the reference now.  Values and gradients against a
    # float64 evaluation written without cancellation.
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(256, 9, generator=g, dtype=torch.float64) * 10).float()
    t = x.argmax(1)  # confident rows: the target is the largest logit
    x.requires_grad_(True)
    out = momkernels.mom_cross_entropy(x, t, 1.0, loss=loss, reduction="none", backend=backend,
                                       **kw)
    (grad,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().requires_grad_(True)
    want = _confident_rows_float64(x64, t, loss, **kw)
    (want_grad,) = torch.autograd.grad(want.sum(), x64)
    # float32 math: a few ulps relative, down to float32's smallest normal number
    tiny = torch.finfo(torch.float32).tiny
    assert_close(out, want, rtol=1e-5, atol=tiny, name=f"{backend} {loss} {kw} loss")
    if kw.get("dice_alpha", 1.0) < 1:
        return  # d a / d p = q^(alpha-1) (q - alpha p) cancels: no rowwise bound
    # each gradient row to 1e-5 of its largest entry (the q-sized target entry
    # of a confident row was 0, or off by several times itself)
    row = want_grad.abs().amax(1, keepdim=True).clamp_min(tiny)
    assert_close(grad / row, want_grad / row, rtol=0, atol=1e-5,
                 name=f"{backend} {loss} {kw} grad / row max")


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


# ----------------------------------------------------------------- GPU paths, tested on CPU
# Defects a review of the CUDA and Triton paths found (a user on a GPU, or on
# torch 2.11, would hit them; CPU CI could not see them).  Each test
# reproduces its defect here: Triton interpreter, host emulation of the CUDA
# kernels, fake CUDA tensors or an emulated torch 2.11 / numpy 2.4.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cpp = pytest.mark.skipif(not ops.is_available(), reason="extension not built")
needs_triton_cpu = pytest.mark.skipif(
    "triton" not in momkernels.available_backends("cpu"),
    reason="the Triton backend on CPU needs triton and TRITON_INTERPRET=1")


def _python_without_interpreter(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this momkernels (the
    installed one, as the tests do) with TRITON_INTERPRET unset."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(momkernels.__file__)), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")


@needs_cpp
def test_cpp_availability_on_cuda_traces_under_fullgraph_compile():
    # backend "cpp"/"auto" on CUDA tensors asked ops.has_cuda(), which called the
    # operator momkernels::build_info (it returns a string) while Dynamo traced:
    # "torch.* op returned non-Tensor" under fullgraph=True.  CPU never takes
    # that branch; here it is traced for a CUDA device.
    def f(x):
        cuda = torch.device("cuda")
        ok = backends.unavailable_reason("cpp", cuda) is None
        return x + (1.0 if ok else 2.0) + (3.0 if backends.auto_backend(cuda) == "cpp" else 4.0)

    torch._dynamo.reset()
    x = torch.zeros(3)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), f(x))


@needs_triton_cpu
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("C,masked", [(8200, slice(8192, 8200)), (20000, slice(8192, 16384))])
def test_triton_row_path_chunk_of_neg_inf_logits(C, masked, label_smoothing):
    # Triton's online softmax took a whole -inf chunk (a vocabulary padded with
    # -inf) relative to its own -inf max: exp(-inf - (-inf)) = NaN loss and gradient.
    torch.manual_seed(0)
    x = torch.randn(2, C, dtype=torch.float64).float()
    x[:, masked] = -float("inf")
    x.requires_grad_(True)
    t = torch.tensor([3, C - 1 if masked.stop < C else 5])
    got = momkernels.cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing,
                                   backend="triton")
    (g,) = torch.autograd.grad(got.sum(), x)
    want = F.cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing)
    (wg,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(got, want)  # +inf with label smoothing, as PyTorch
    torch.testing.assert_close(g, wg, rtol=1e-5, atol=1e-7)
    assert bool(torch.isfinite(g).all())


def test_triton_launches_on_the_logits_device(monkeypatch):
    # Triton launches on the current CUDA device, not the tensors' one: logits
    # on cuda:1 while cuda:0 is current (device_map="auto") faulted.  Fake
    # CUDA tensors on cuda:1, torch.cuda.device and the launches recorded.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mt = pytest.importorskip("momkernels.triton")
    if mt._import_error is not None:
        pytest.skip(mt._import_error)
    from momkernels.triton import kernels as K
    from momkernels.triton import ops as tops

    current: list[torch.device] = []
    launched: list[tuple[object, object]] = []

    @contextlib.contextmanager
    def device(d):
        current.append(torch.device(d))
        yield
        current.pop()

    class Launch:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *a, **k: launched.append((self.kernel, current[-1] if current else None))

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(tops, "wrap_triton", Launch)
    cuda1 = torch.device("cuda", 1)
    with FakeTensorMode():
        x = torch.empty(4, 300, device=cuda1)
        t = torch.zeros(4, dtype=torch.int64, device=cuda1)
        opts = (0, -100, "ce", 2.0, 1.0, 0.01, 0.0)
        out, stats, coef = tops.triton_mom_loss_fwd._init_fn(
            x, t, None, 0.5, *opts, "mean", "valid", 0, False)
        tops.triton_mom_loss_bwd._init_fn(torch.ones((), device=cuda1), x, t, None, stats, coef,
                                          *opts)
        tops.triton_mom_loss_bwd_inplace._init_fn(torch.ones((), device=cuda1), x, t, None, stats,
                                                  coef, *opts)
    assert launched == [(K.mom_fwd_kernel, cuda1), (K.mom_reduce_kernel, cuda1),
                        (K.mom_bwd_kernel, cuda1), (K.mom_bwd_kernel, cuda1)]


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_torch_reference_out_of_range_target_is_nan_not_an_index(reduction):
    # backend="torch" on CUDA indexed the gather and w[t] with the bad target: a
    # device-side assert that kills the CUDA context (on CPU: a RuntimeError,
    # which is what this test saw before).  docs/spec.md: that row is NaN.
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64) + 0.5
    t = torch.tensor([0, 7, -3, 4, -100])
    good = torch.tensor([True, False, False, True, True])
    for kw in (dict(), dict(weight=w, label_smoothing=0.1), dict(loss="focal")):
        out = reference.mom_cross_entropy(x, t, 0.3, reduction=reduction, **kw)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert bool(g[~good].isnan().all()), (kw, g)  # the bad rows' gradient rows
        if reduction == "none":
            assert bool(out[~good].isnan().all())
            want = reference.mom_cross_entropy(x[good], t[good], 0.3, reduction="none", **kw)
            (wg,) = torch.autograd.grad(want.sum(), x)
            torch.testing.assert_close(out[good], want)
            torch.testing.assert_close(g[good], wg[good])
        else:
            assert bool(out.isnan()), (kw, out)


def test_benchmark_gpu_bwd_times_the_backward_alone(monkeypatch):
    # `python -m momkernels bench --device cuda`: the "bwd" rows timed the
    # forward too (do_bench of step() plus its backward).  do_bench replaced by
    # 5 calls of what it is given; forwards and backwards counted.
    triton_testing = pytest.importorskip("triton.testing")
    from momkernels import benchmark

    calls = {"fwd": 0, "bwd": 0}
    hooked = []

    def loss_fn(x, t, lam):
        if not hooked:  # x is the steps' logits leaf: count the gradients it gets
            hooked.append(x.register_hook(lambda g: calls.__setitem__("bwd", calls["bwd"] + 1)))
        calls["fwd"] += 1
        return reference.cross_entropy(x, t)

    def do_bench(fn, **kwargs):
        for _ in range(5):
            fn()
        return [1.0, 0.5, 1.5]

    monkeypatch.setattr(triton_testing, "do_bench", do_bench)
    steps = benchmark.make_steps(loss_fn, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), 1.0)
    assert benchmark.time_gpu(steps["bwd"]) == (1.0, 0.5, 1.5)
    assert calls == {"fwd": 1, "bwd": 5}, calls  # one forward, outside the timing
    calls.update(fwd=0, bwd=0)
    benchmark.time_gpu(steps["fwd+bwd"])
    assert calls == {"fwd": 6, "bwd": 6}, calls  # 5 timed + the call that returns no backward


def _emulated_forward_rows(tmp_path_factory) -> str:
    """csrc/cuda/host_emulation/forward_rows.cpp built (the CUDA forward kernels
    on the CPU, no torch: seconds to compile); skips without g++ / CUDA headers."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cxx = shutil.which("g++")
    if cxx is None or not os.path.exists(os.path.join(cuda_home, "include", "cuda_bf16.h")):
        pytest.skip("needs g++ and the CUDA headers (CUDA_HOME) for the host emulation")
    exe = str(tmp_path_factory.mktemp("emu") / "forward_rows")
    r = subprocess.run(
        [cxx, "-O0", "-std=c++20", "-pthread", "-DMOMK_CUDA_EMULATION",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-Wno-unused-function",
         "-I", os.path.join(cuda_home, "include"), "-I", os.path.join(REPO, "csrc"),
         os.path.join(REPO, "csrc", "cuda", "host_emulation", "forward_rows.cpp"), "-o", exe],
        capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return exe


def test_cuda_large_c_smoothing_with_neg_inf_first_pack(tmp_path_factory):
    # CUDA large-C path (C > 128): a thread whose first 16-byte pack was all
    # -inf added w (m - x) = -inf - (-inf) = NaN to the label-smoothing term
    # (device_common.cuh, state_add) where PyTorch gives +inf.  Run in the host
    # emulation of the CUDA kernels: C = 300, fp32, logits 0-3 = -inf.
    exe = _emulated_forward_rows(tmp_path_factory)
    torch.manual_seed(0)
    x = torch.randn(2, 300)
    x[:, :4] = -float("inf")
    t = torch.tensor([5, 299])
    for eps in (0.0, 0.1):
        stdin = "\n".join([f"2 300 {eps}", "5 299"] + [" ".join(map(repr, row.tolist()))
                                                      for row in x])
        r = subprocess.run([exe], input=stdin, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = torch.tensor([float(v) for v in r.stdout.split()])
        want = F.cross_entropy(x, t, reduction="none", label_smoothing=eps)
        torch.testing.assert_close(got, want)  # eps = 0.1: +inf, as PyTorch (was NaN)


_TORCH_211_WRAP_TRITON = '''
import torch, torch.library, torch._library.triton as lt
from triton.runtime.jit import JITFunction
real = lt.wrap_triton
def wrap_triton(kernel):  # torch 2.11's check (2.14 returns an InterpretedFunction as it is)
    if not isinstance(kernel, JITFunction):
        raise RuntimeError("wrap_triton only works on functions annotated with triton.jit")
    return real(kernel)
lt.wrap_triton = torch.library.wrap_triton = wrap_triton
'''


@needs_triton_cpu
def test_triton_interpreter_does_not_wrap_interpreted_kernels():
    # Under TRITON_INTERPRET=1 on torch 2.11 every Triton call failed: the ops
    # applied torch.library.wrap_triton to InterpretedFunction kernels, which
    # 2.11 rejects.  Reproduced here by giving wrap_triton 2.11's check.
    code = _TORCH_211_WRAP_TRITON + '''
import momkernels, torch.nn.functional as F
x = torch.randn(3, 9, requires_grad=True)
t = torch.tensor([0, 4, 8])
loss = momkernels.cross_entropy(x, t, backend="triton")
(g,) = torch.autograd.grad(loss, x)
torch.testing.assert_close(loss, F.cross_entropy(x, t))
print("OK")
'''
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=env, cwd="/")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


@needs_triton_cpu
@pytest.mark.parametrize("C", [9, 300])
def test_triton_interpreter_loops_with_numpy_2_4(C, monkeypatch):
    # triton 3.6's interpreter gives range() a scalar argument through
    # int(1-element array), which numpy >= 2.4 refuses: every kernel loop
    # (`range(BLOCK_C, C, BLOCK_C)`) failed.  triton 3.6's conversion installed
    # into this triton's interpreter reproduces it.
    import numpy as np
    from triton.runtime import interpreter

    try:
        int(np.array([1]))
        pytest.skip(f"numpy {np.__version__} still converts 1-element arrays to int")
    except TypeError:
        pass
    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_as_triton_3_6(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", patch_tensor_as_triton_3_6)
    x = torch.randn(2, C, requires_grad=True)
    t = torch.tensor([0, C - 1])
    loss = momkernels.cross_entropy(x, t, backend="triton")
    (g,) = torch.autograd.grad(loss, x)
    want = F.cross_entropy(x, t)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, x)[0])


def test_triton_kernels_found_by_torch_compile_cache():
    # torch's compile caches (AOTAutograd, FX graph) key a triton_op by its
    # kernels' source, found by reading the op's code
    # (torch._library.triton.get_inner_triton_kernels): only
    # `wrap_triton(plain_name)` is recognised, so `wrap_triton(K.kernel)` gave
    # no kernels and an edited kernel could reuse stale compiled code.  Needs
    # real triton_ops: run without the interpreter (no GPU needed to define them).
    pytest.importorskip("triton")
    code = '''
from torch._library.triton import get_triton_kernels_for_op as found
from momkernels.triton import kernels as K, ops  # noqa: F401 -- defines the ops
want = {"triton_mom_loss_fwd": [K.mom_fwd_kernel, K.mom_reduce_kernel],
        "triton_mom_loss_bwd": [K.mom_bwd_kernel],
        "triton_mom_loss_bwd_inplace": [K.mom_bwd_kernel]}
for name, kernels in want.items():
    got = found("momkernels::" + name)
    assert sorted(map(id, got)) == sorted(map(id, kernels)), (name, got)
print("OK")
'''
    r = _python_without_interpreter(code)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_docs_say_out_of_range_rows_get_a_nan_gradient():
    # momkernels/triton/__init__.py said an out-of-range target's row gets a
    # zero gradient; the kernel writes NaN (test_triton.py asserts it), as
    # docs/SEMANTICS.md S10 says for the Triton and GPU paths.
    mt = pytest.importorskip("momkernels.triton")
    doc = " ".join(mt.__doc__.split())
    assert "their gradient 0" not in doc
    assert "loss and gradient row are NaN" in doc
    with open(os.path.join(REPO, "docs", "SEMANTICS.md")) as f:
        s10 = f.read().split("## S10", 1)[1].split("\n## ", 1)[0]
    assert "gradient row are NaN" in " ".join(s10.split())
