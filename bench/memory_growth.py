"""RSS growth of the process over many fwd+bwd steps of the MoM loss (CPU).

    python bench/memory_growth.py [--steps 10000] [--backend cpp]
"""

import argparse
import gc
import os

import torch

import momkernels
from momkernels.benchmark import cpu_model


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--backend", default="cpp")
    p.add_argument("--shape", default="512x2000")
    a = p.parse_args()
    N, C = map(int, a.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, generator=g)
    t = torch.randint(0, C, (N,), generator=g)
    leaf = x.clone().requires_grad_()

    def step():
        leaf.grad = None
        momkernels.mom_cross_entropy(leaf, t, 0.175, backend=a.backend).backward()

    for _ in range(200):  # warm up allocator caches
        step()
    gc.collect()
    before = rss_bytes()
    for _ in range(a.steps):
        step()
    gc.collect()
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{a.backend} {N}x{C}: RSS growth over {a.steps} steps: "
          f"{(rss_bytes() - before) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
