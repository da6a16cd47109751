"""``python -m momkernels bench``: the MoM loss against the code users write today.

Competitors, measured side by side in one run:

* ``eager``   -- ``F.cross_entropy(reduction="none")`` + mask + sums (for
  ``lam = 1``, plain ``F.cross_entropy``): what a training loop does today;
* ``compile`` -- ``torch.compile`` of that same function (compile time is
  reported separately and excluded from the timings);
* every available momkernels backend (``cpp``, ``torch`` = the reference,
  ``triton`` on GPU);
* on GPU, Liger-Kernel's ``LigerCrossEntropyLoss`` when installed (plain CE
  only: it has no MoM term).

Timings are medians over many repetitions after warm-up (CPU: a
``perf_counter`` loop; GPU: ``triton.testing.do_bench``), with the 25th/75th
percentiles.  For memory-bound shapes the achieved bandwidth is reported as a
fraction of a measured copy of the same bytes (``memcpy``).  Results go to a
CSV and a markdown table whose header records the machine, versions, thread
count and the command.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

IGNORE = -100


# ----------------------------------------------------------------- competitors


def eager_mom_loss(x, t, lam: float, o_index: int = 0, ignore_index: int = IGNORE):
    """The MoM loss as users write it with stock PyTorch (mean, D_MoM = valid tokens)."""
    if lam == 1.0:
        return F.cross_entropy(x, t, ignore_index=ignore_index)
    per_token = F.cross_entropy(x, t, reduction="none", ignore_index=ignore_index)
    valid = t != ignore_index
    denom = valid.sum()
    is_o = t == o_index
    return lam * per_token.sum() / denom + (1 - lam) * (per_token * is_o).sum() / denom


def eager_loss_fn(loss: str) -> Callable:
    if loss == "ce":
        return eager_mom_loss

    def per_token_loss(x, t, lam, o_index=0, ignore_index=IGNORE):
        # focal / dice written with stock ops, as a user would
        valid = t != ignore_index
        safe = torch.where(valid, t, torch.zeros_like(t))
        logp = torch.log_softmax(x.float(), -1)
        lp = logp.gather(1, safe[:, None]).squeeze(1)
        p = lp.exp()
        if loss == "focal":
            ell = -((1 - p) ** 2) * lp
        else:
            a = (1 - p) * p
            ell = 1 - (2 * a + 0.01) / (a + 1 + 0.01)
        ell = ell * valid
        denom = valid.sum()
        return (lam * ell.sum() + (1 - lam) * (ell * (t == o_index)).sum()) / denom

    return per_token_loss


def momkernels_fn(backend: str, loss: str) -> Callable:
    import momkernels

    def fn(x, t, lam):
        return momkernels.mom_cross_entropy(x, t, lam, o_index=0, loss=loss, backend=backend)

    return fn


def liger_fn() -> Optional[Callable]:
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        return None
    mod = LigerCrossEntropyLoss(ignore_index=IGNORE)
    return lambda x, t, lam: mod(x, t)


# ----------------------------------------------------------------- timing


@dataclass
class Row:
    device: str
    dtype: str
    N: int
    C: int
    loss: str
    lam: float
    competitor: str
    mode: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    speedup_vs_eager: float = float("nan")
    bandwidth_frac: float = float("nan")
    compile_s: float = float("nan")


def _quantiles(ts: list[float]) -> tuple[float, float, float]:
    ts = sorted(ts)
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return statistics.median(ts) * 1e3, q[0] * 1e3, q[2] * 1e3


def time_cpu(step: Callable[[], Optional[Callable]], reps: int, warmup: int,
             min_seconds: float) -> tuple[float, float, float]:
    """Time ``step``; if it returns a callable, only that part is timed (bwd)."""
    for _ in range(warmup):
        r = step()
        if callable(r):
            r()
    ts: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(ts) < reps or (time.perf_counter() < t_end and len(ts) < 20 * reps):
        t0 = time.perf_counter()
        r = step()
        if callable(r):
            t0 = time.perf_counter()
            r()
        ts.append(time.perf_counter() - t0)
    return _quantiles(ts)


def time_gpu(step: Callable[[], Optional[Callable]]) -> tuple[float, float, float]:
    import triton.testing

    def run():
        r = step()
        if callable(r):
            r()

    q = triton.testing.do_bench(run, quantiles=[0.5, 0.25, 0.75], return_mode="median")
    return float(q[0]), float(q[1]), float(q[2])


def make_steps(fn, x, t, lam):
    """fwd (training-mode forward), bwd (backward only), fwd+bwd closures."""
    leaf = x.detach().clone().requires_grad_()

    def fwd():
        fn(leaf, t, lam)

    def bwd():
        leaf.grad = None
        out = fn(leaf, t, lam)
        return out.backward

    def fwdbwd():
        leaf.grad = None
        fn(leaf, t, lam).backward()

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwdbwd}


def memcpy_ms(numel: int, dtype: torch.dtype, device: str, reps: int) -> float:
    """Median time of copying numel elements into a preallocated buffer."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    if device == "cuda":
        return time_gpu(lambda: dst.copy_(src))[0]
    return time_cpu(lambda: dst.copy_(src), reps, 3, 0.5)[0]


def make_batch(N: int, C: int, dtype: torch.dtype, device: str, seed: int = 0):
    """NER-like batch: ~70 % of valid rows are the majority class 0, 10 % ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g).to(dtype)
    t = torch.randint(0, C, (N,), generator=g)
    if C <= 64:
        t[torch.rand(N, generator=g) < 0.7] = 0
    t[torch.rand(N, generator=g) < 0.1] = IGNORE
    return x.to(device), t.to(device)


# ----------------------------------------------------------------- driver


def machine_header(argv: list[str]) -> list[str]:
    import momkernels
    from momkernels import ops

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `python -m momkernels bench {' '.join(argv)}`",
        f"- machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        f"- versions: momkernels {momkernels.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}, extension {ops.build_info() or 'not loaded'}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- gpu: {torch.cuda.get_device_name()}")
    return lines


def parse_shape(s: str) -> tuple[int, int]:
    n, c = s.lower().split("x")
    return int(n), int(c)


QUICK_SHAPES = ["8192x9", "4096x32000"]
FULL_SHAPES = ["4096x9", "8192x9", "32768x9", "8192x17", "8192x37", "8192x2",
               "1024x32000", "4096x32000", "2048x128256"]


def run(args) -> list[Row]:
    from momkernels import available_backends

    device = args.device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    backends = [b for b in available_backends(device) if not args.backends or b in args.backends]
    rows: list[Row] = []
    for shape in args.shapes:
        N, C = parse_shape(shape)
        x, t = make_batch(N, C, dtype, device)
        copy_ms = memcpy_ms(N * C, dtype, device, args.reps)
        bytes_fb = 3 * N * C * x.element_size()  # fwd reads, bwd reads + writes
        for loss in args.losses:
            for lam in args.lams:
                competitors: dict[str, Callable] = {"eager": eager_loss_fn(loss)}
                compile_s = float("nan")
                if not args.no_compile:
                    torch._dynamo.reset()
                    compiled = torch.compile(eager_loss_fn(loss), dynamic=False)
                    t0 = time.perf_counter()
                    leaf = x.detach().clone().requires_grad_()
                    compiled(leaf, t, lam).backward()
                    compile_s = time.perf_counter() - t0
                    competitors["compile"] = compiled
                for b in backends:
                    competitors[b] = momkernels_fn(b, loss)
                liger = liger_fn() if device == "cuda" and loss == "ce" and lam == 1.0 else None
                if liger is not None:
                    competitors["liger"] = liger
                eager_ms: dict[str, float] = {}
                for name, fn in competitors.items():
                    for mode, step in make_steps(fn, x, t, lam).items():
                        if mode not in args.modes:
                            continue
                        if device == "cuda":
                            med, p25, p75 = time_gpu(step)
                        else:
                            med, p25, p75 = time_cpu(step, args.reps, args.warmup, args.min_seconds)
                        if name == "eager":
                            eager_ms[mode] = med
                        row = Row(device, args.dtype, N, C, loss, lam, name, mode, med, p25, p75)
                        row.speedup_vs_eager = eager_ms.get(mode, float("nan")) / med
                        if mode == "fwd+bwd":
                            row.bandwidth_frac = (bytes_fb / (med * 1e-3)) / (
                                2 * N * C * x.element_size() / (copy_ms * 1e-3))
                        if name == "compile":
                            row.compile_s = compile_s
                        rows.append(row)
                        print(f"{device} {args.dtype} N={N:>6} C={C:>6} {loss:>5} lam={lam:<5} "
                              f"{name:>8} {mode:>7}: {med:9.3f} ms "
                              f"[{p25:.3f}, {p75:.3f}]  x{row.speedup_vs_eager:5.1f} vs eager",
                              flush=True)
    return rows


def write_outputs(rows: list[Row], out_dir: str, header: list[str], tag: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{tag}.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    md_path = os.path.join(out_dir, f"{tag}.md")
    with open(md_path, "w") as f:
        f.write(f"# Benchmark: {tag}\n\n" + "\n".join(header) + "\n\n")
        f.write("Median ms [25th, 75th percentile]; speed-up = eager median / this median; "
                "bandwidth = (3 passes over the logits) / time, as a fraction of a measured "
                "copy of the same bytes (fwd+bwd only).\n\n")
        f.write("| dtype | N | C | loss | lam | competitor | mode | median ms | IQR ms | "
                "speed-up vs eager | bandwidth / memcpy |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            bw = "" if r.bandwidth_frac != r.bandwidth_frac else f"{100 * r.bandwidth_frac:.0f} %"
            comp = "" if r.compile_s != r.compile_s else f" (compile {r.compile_s:.1f} s)"
            f.write(f"| {r.dtype} | {r.N} | {r.C} | {r.loss} | {r.lam} | {r.competitor}{comp} | "
                    f"{r.mode} | {r.median_ms:.3f} | {r.p25_ms:.3f}-{r.p75_ms:.3f} | "
                    f"{r.speedup_vs_eager:.1f}x | {bw} |\n")
    print(f"wrote {csv_path} and {md_path}")


def plot(csv_path: str, png_path: str) -> None:
    """fwd+bwd time per competitor and shape (log scale), speed-up over eager on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r["mode"] == "fwd+bwd"]
    groups = sorted({(r["loss"], r["lam"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.2), squeeze=False)
    for ax, (loss, lam, dtype) in zip(axes[0], groups):
        sel = [r for r in rows if (r["loss"], r["lam"], r["dtype"]) == (loss, lam, dtype)]
        shapes = list(dict.fromkeys(f"{r['N']}x{r['C']}" for r in sel))
        comps = list(dict.fromkeys(r["competitor"] for r in sel))
        width = 0.8 / len(comps)
        for k, comp in enumerate(comps):
            xs, ys, sp = [], [], []
            for i, shp in enumerate(shapes):
                r = next((r for r in sel if r["competitor"] == comp
                          and f"{r['N']}x{r['C']}" == shp), None)
                if r is not None:
                    xs.append(i + (k - (len(comps) - 1) / 2) * width)
                    ys.append(float(r["median_ms"]))
                    sp.append(float(r["speedup_vs_eager"]))
            bars = ax.bar(xs, ys, width, label=comp)
            for b, v in zip(bars, sp):
                ax.annotate(f"{v:.1f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), [f"N x C = {s}" for s in shapes])
        ax.set_ylabel("fwd+bwd median (ms, log)")
        ax.set_title(f"{dtype}, loss={loss}, lam={lam} (labels: speed-up vs eager)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m momkernels bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="all shapes (default: the two headline ones)")
    p.add_argument("--shapes", nargs="+", help="NxC shapes, e.g. 8192x9 4096x32000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--losses", nargs="+", default=["ce"], choices=["ce", "focal", "dice"])
    p.add_argument("--lams", nargs="+", type=float, default=[0.175])
    p.add_argument("--modes", nargs="+", default=["fwd", "bwd", "fwd+bwd"],
                   choices=["fwd", "bwd", "fwd+bwd"])
    p.add_argument("--backends", nargs="+", help="momkernels backends (default: all available)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile competitor")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=1.0, help="time per measurement (CPU)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="output folder (default: docs/bench)")
    p.add_argument("--tag", default=None, help="output file stem")
    p.add_argument("--plot-only", metavar="CSV", help="only draw the PNG of an existing CSV")
    args = p.parse_args(argv)
    if args.plot_only:
        plot(args.plot_only, os.path.splitext(args.plot_only)[0] + ".png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shapes = args.shapes or (FULL_SHAPES if args.full else QUICK_SHAPES)
    rows = run(args)
    out = args.out or os.path.join("docs", "bench")
    tag = args.tag or f"{args.device}_{args.dtype}{'_full' if args.full else ''}"
    write_outputs(rows, out, machine_header(argv), tag)
    try:
        plot(os.path.join(out, f"{tag}.csv"), os.path.join(out, f"{tag}.png"))
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return 0
