"""pytest-benchmark cases for the core CPU shapes (not part of the CI test run):

    pytest bench/ --benchmark-only            # add --benchmark-json=out.json to keep results

Each case times forward + backward of the MoM loss (lam = 0.175, fp32) for the
eager PyTorch code users write today and for momkernels' backends, with the
harness's eager loss and data (momkernels/benchmark.py); every result records
the CPU model and ATen's CPU capability in its ``extra_info``.
"""

import pytest
import torch

import momkernels
from momkernels.benchmark import cpu_model, eager_mom_loss, make_batch

SHAPES = [(8192, 9), (8192, 37), (4096, 32000)]
COMPETITORS = ["eager"] + [b for b in momkernels.available_backends("cpu") if b != "triton"]


@pytest.mark.parametrize("competitor", COMPETITORS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
def test_mom_fwd_bwd(benchmark, shape, competitor):
    N, C = shape
    x, t = make_batch(N, C, torch.float32, "cpu")
    leaf = x.clone().requires_grad_()
    if competitor == "eager":
        def loss():
            return eager_mom_loss(leaf, t, 0.175)
    else:
        def loss():
            return momkernels.mom_cross_entropy(leaf, t, 0.175, backend=competitor)

    def step():
        leaf.grad = None
        loss().backward()

    benchmark.group = f"{N}x{C}"
    benchmark.extra_info.update(cpu=cpu_model(),
                                aten_cpu_capability=torch.backends.cpu.get_cpu_capability())
    benchmark(step)
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
