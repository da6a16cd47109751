"""Reliability: concurrency, no leaked autograd graphs, bounded memory over many
calls, and 64-bit indexing (slow)."""

import gc
import os
import threading
import weakref

import pytest
import torch

import momkernels
from helpers import BACKENDS, INTERPRETED

FAST = [b for b in BACKENDS if b not in INTERPRETED]


def _batch(N, C, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g).to(dtype)
    t = torch.randint(0, C, (N,), generator=g)
    t[torch.rand(N, generator=g) < 0.2] = -100
    return x, t


def _loss_and_grad(x, t, backend):
    leaf = x.clone().requires_grad_()
    loss = momkernels.mom_cross_entropy(leaf, t, 0.175, backend=backend)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("backend", FAST)
def test_concurrent_calls_from_python_threads(backend):
    # Several Python threads, each with its own inputs (small and large C), get
    # exactly the results of a serial run.
    cases = [_batch(257, 9, s) for s in range(4)] + [_batch(9, 5000, s) for s in range(4)]
    serial = [_loss_and_grad(x, t, backend) for x, t in cases]
    results = [None] * len(cases)
    errors = []

    def work(k):
        try:
            for _ in range(20):
                results[k] = _loss_and_grad(*cases[k], backend)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(cases))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for (l0, g0), (l1, g1) in zip(serial, results):
        assert torch.equal(l0, l1) and torch.equal(g0, g1)


@pytest.mark.parametrize("backend", FAST)
def test_logits_not_kept_alive_after_backward(backend):
    x, t = _batch(64, 1000, 0)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf, as a model's output is
    ref = weakref.ref(logits)
    loss = momkernels.mom_cross_entropy(logits, t, 0.175, backend=backend)
    loss.backward()
    del logits, loss
    gc.collect()
    assert ref() is None, "the loss graph still holds the logits after backward"


def _rss_bytes():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("backend", [b for b in FAST if b != "torch"])
def test_memory_does_not_grow_over_many_calls(backend):
    x, t = _batch(512, 2000, 0)  # 4 MB of logits: the gradient buffer is recycled
    leaf = x.clone().requires_grad_()

    def step():
        leaf.grad = None
        momkernels.mom_cross_entropy(leaf, t, 0.175, backend=backend).backward()

    for _ in range(200):  # warm up allocator caches
        step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(2000):
        step()
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 2000 steps"


@pytest.mark.slow
@pytest.mark.skipif(not momkernels.ops.is_available(), reason="needs the compiled extension")
def test_more_than_2_pow_31_logits_cpu():
    # > 2^31 logit elements (bf16: 4.3 GB, plus its gradient): offsets are int64.
    try:
        import psutil  # noqa: F401
        avail = psutil.virtual_memory().available
    except ImportError:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = int(info["MemAvailable"].split()[0]) * 1024
    C = 32000
    N = (2**31) // C + 2
    if avail < 3 * N * C * 2:
        pytest.skip(f"needs ~{3 * N * C * 2 / 2**30:.0f} GiB free, have {avail / 2**30:.0f}")
    x = torch.zeros(N, C, dtype=torch.bfloat16)
    t = torch.full((N,), -100)
    t[-1] = C - 1  # only the last row counts: its offset is beyond 2^31 elements
    x[-1, C - 1] = 5.0
    x.requires_grad_()
    loss = momkernels.mom_cross_entropy(x, t, 1.0, backend="cpp", reduction="sum")
    loss.backward()
    want = torch.nn.functional.cross_entropy(x[-1:].detach().float(), t[-1:], reduction="sum")
    torch.testing.assert_close(loss.float(), want, rtol=1e-2, atol=1e-2)
    g = x.grad[-1].float()
    p = torch.softmax(x[-1].detach().float(), 0)
    torch.testing.assert_close(g[C - 1], p[C - 1] - 1, rtol=2e-2, atol=1e-4)
    assert bool((x.grad[:-1] == 0).all())
