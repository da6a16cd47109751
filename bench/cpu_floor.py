"""Where the CPU time of the headline shapes goes: kernel vs fixed costs (8192 x 9)
and the memory floor (4096 x 32000).  Prints a markdown report.

    python bench/cpu_floor.py > docs/bench/cpu_analysis.md
"""

import platform
import time

import torch

import momkernels
from momkernels.benchmark import eager_mom_loss, machine_header, make_batch


def tmed(f, reps):
    for _ in range(3):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def main():
    print("# Where the CPU time goes\n")
    print("\n".join(machine_header(["(bench/cpu_floor.py)"])).replace(
        "python -m momkernels bench (bench/cpu_floor.py)", "python bench/cpu_floor.py"))
    op_f, op_b = torch.ops.momkernels.mom_loss_fwd, torch.ops.momkernels.mom_loss_bwd
    opts = ("ce", 2.0, 1.0, 0.01, 0.0)

    print("\n## N = 8192, C = 9 (NER batch), fp32, lam = 0.175: kernels vs fixed costs\n")
    print("For C <= 64 on the CPU (`kTileMaxC`, csrc/cpu/kernel.h; every floating dtype: "
          "float16/bfloat16 logits only where the global factor is known before the kernel, "
          "i.e. not a weighted mean) autograd uses the fused pair: `mom_loss_fwd_fused` "
          "computes the loss and the gradient for a unit upstream gradient in one pass. For an "
          "unweighted mean (and for sum / none) the global factor 1/D is folded in, since D "
          "(the number of valid rows) is counted from the targets before the kernel runs, so "
          "`loss.backward()` calls no backward operator at all: autograd receives the buffer "
          "as the gradient. `mom_loss_bwd_fused_` (an in-place scale) runs only for another "
          "upstream gradient or a weighted mean. The two-operator path (`mom_loss_fwd` + "
          "`mom_loss_bwd`) is what it replaced.\n")
    x, t = make_batch(8192, 9, torch.float32, "cpu")
    leaf = x.clone().requires_grad_()
    args = (None, 0.175, 0, -100, *opts, "mean", "valid")
    loss, stats, coef = op_f(x, t, *args)
    g = torch.ones(())
    fused_f, fused_b = torch.ops.momkernels.mom_loss_fwd_fused, torch.ops.momkernels.mom_loss_bwd_fused_
    _, _, _, gf, gscale = fused_f(x, t, *args)

    def fused_pair():
        r = fused_f(x, t, *args)
        fused_b(r[3], g, t, r[4], 0, -100)

    def fb():
        leaf.grad = None
        momkernels.mom_cross_entropy(leaf, t, 0.175).backward()

    def fe():
        leaf.grad = None
        eager_mom_loss(leaf, t, 0.175).backward()

    def nograd():
        with torch.no_grad():
            momkernels.mom_cross_entropy(x, t, 0.175)

    rows = {
        "fused forward operator (loss + gradient), no autograd": tmed(lambda: fused_f(x, t, *args), 500),
        "fused backward operator (in-place scale of the gradient)":
            tmed(lambda: fused_b(gf, g, t, gscale, 0, -100), 500),
        "fused forward + in-place scale operator (the cost with a non-unit upstream gradient), no autograd":
            tmed(fused_pair, 500),
        "two-operator path: forward operator alone": tmed(lambda: op_f(x, t, *args), 500),
        "two-operator path: backward operator alone":
            tmed(lambda: op_b(g, x, t, None, stats, coef, 0, -100, *opts), 500),
        "forward operator on 16 rows (= fixed dispatch cost)":
            tmed(lambda: op_f(x[:16], t[:16], *args), 500),
        "public mom_cross_entropy forward under no_grad (Python checks + dispatch + kernel)":
            tmed(nograd, 500),
        "momkernels.mom_cross_entropy fwd+bwd (public API, autograd)": tmed(fb, 500),
        "eager PyTorch fwd+bwd": tmed(fe, 500),
    }
    print("| what | median ms |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.3f} |")
    step = rows["momkernels.mom_cross_entropy fwd+bwd (public API, autograd)"]
    kern = rows["fused forward operator (loss + gradient), no autograd"]
    print(f"\nOutside the kernels (Python checks, dispatcher, autograd graph and engine, "
          f"gradient accumulation): {step - kern:.3f} ms of the {step:.3f} ms step "
          f"({(step - kern) / step * 100:.0f} %). Eager / momkernels: "
          f"{rows['eager PyTorch fwd+bwd'] / step:.1f}x; eager / kernels alone: "
          f"{rows['eager PyTorch fwd+bwd'] / kern:.1f}x.")

    print("\n## N = 4096, C = 32000 (524 MB of fp32 logits): the memory floor\n")
    x, t = make_batch(4096, 32000, torch.float32, "cpu")
    y = torch.empty_like(x)
    loss, stats, coef = op_f(x, t, None, 0.175, 0, -100, *opts, "mean", "valid")
    rows = {
        "read pass: x.sum()": tmed(lambda: x.sum(), 7),
        "copy into an existing buffer: y.copy_(x) (read + write)": tmed(lambda: y.copy_(x), 7),
        "write into an existing buffer: y.fill_(0)": tmed(lambda: y.fill_(0), 7),
        "write into a fresh buffer: torch.empty_like(x).fill_(0) (page faults)":
            tmed(lambda: torch.empty_like(x).fill_(0), 7),
        "momkernels forward operator (1 read pass + exp)":
            tmed(lambda: op_f(x, t, None, 0.175, 0, -100, *opts, "mean", "valid"), 7),
        "momkernels backward operator (read + exp + write the gradient; a freed gradient buffer is recycled)":
            tmed(lambda: op_b(g, x, t, None, stats, coef, 0, -100, *opts), 7),
    }
    print("| what | median ms |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} |")


if __name__ == "__main__":
    main()
