"""``python -m momkernels bench``: the MoM loss against the code users write today.

Competitors, measured side by side in one run:

* ``eager``   -- ``F.cross_entropy(reduction="none")`` + mask + sums (for
  ``lam = 1``, plain ``F.cross_entropy``): what a training loop does today;
  on a CPU whose default ATen kernels are AVX-512 ones, also ``eager[avx2]``:
  the same code in a subprocess with ``ATEN_CPU_CAPABILITY=avx2`` (eager at
  its best ISA: PyTorch's AVX-512 kernels are not always its fastest).  Every
  speed-up is over the *faster* of the eager rows, so none rests on a slow
  baseline;
* ``compile`` -- ``torch.compile`` of that same function (compile time is
  reported separately and excluded from the timings);
* every available momkernels backend (``cpp``, ``torch`` = the reference,
  ``triton`` on GPU);
* on GPU, Liger-Kernel's ``LigerCrossEntropyLoss`` when installed (plain CE
  only: it has no MoM term), and with ``--competitors`` ``triton+ls``: the
  Triton backend with label smoothing 0.1 (its forward with the most
  registers).

Timings are medians over many repetitions after warm-up (CPU: a
``perf_counter`` loop; GPU: ``triton.testing.do_bench``), with the 25th/75th
percentiles.  For memory-bound shapes the achieved bandwidth is reported as a
fraction of a measured copy of the same bytes (``memcpy``).

Peak extra memory (fwd+bwd rows): the most bytes that one forward + backward
holds at any moment beyond the logits and their gradient, in MiB and in % of
the logits' size.  CPU: every allocation and free of PyTorch's CPU allocator
during one step, recorded by ``torch.profiler`` (``profile_memory=True``) with
its address, summed in time order; the gradient's own allocation (found by its
address) is not counted.  momkernels' C++ backward takes gradient buffers of
>= 1 MiB from a small recycling cache (``MOMKERNELS_GRAD_CACHE``) outside that
allocator; that buffer *is* the gradient, so it is not extra either.  CUDA:
``torch.cuda.max_memory_allocated`` over one step minus the bytes allocated
before it, minus the gradient when it was newly allocated.

This is the one harness: ``bench/gpu_bench.py`` (run by ``bench/gpu_session.sh``)
is a thin command line over it, ``bench/cpu_floor.py`` and
``bench/test_bench_cpu.py`` import its eager loss, data and machine header.

Modes (see ``--help``): the default is the two headline shapes (fp32, ce,
lam 0.175); ``--quick`` a small subset with few repetitions (< 1 min);
``--full`` the grid of shapes x dtypes x losses x lams (``full_grid``);
``--sweep N`` / ``--sweep C`` fwd+bwd time against N at fixed C (or C at fixed
N), plotted log-log per competitor.  Results go to a CSV (every row names
the CPU model), a markdown table whose header records the machine (CPU model,
ATen CPU capability), versions, thread count and the command, and a PNG.
``--time-budget S`` starts no measurement after S seconds and measures the
``compile`` competitor last (a second pass over the cases); the CSV is
rewritten after every case, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import math
import os
import platform
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
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


def momkernels_fn(backend: str, loss: str, label_smoothing: float = 0.0) -> Callable:
    import momkernels

    def fn(x, t, lam):
        return momkernels.mom_cross_entropy(x, t, lam, o_index=0, loss=loss, backend=backend,
                                            label_smoothing=label_smoothing)

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
    peak_extra_MiB: float = float("nan")
    peak_extra_pct_logits: float = float("nan")
    # |loss - eager's float32 loss| of the same batch (nan: not the same loss)
    abs_diff_vs_eager: float = float("nan")
    cpu: str = ""  # cpu_model(): every result row names the machine's CPU


def _quantiles(ts: list[float]) -> tuple[float, float, float]:
    ts = sorted(ts)
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return statistics.median(ts) * 1e3, q[0] * 1e3, q[2] * 1e3


def time_cpu(step: Callable[[], Optional[Callable]], reps: int, warmup: int,
             min_seconds: float, max_seconds: Optional[float] = None,
             min_reps: int = 3) -> tuple[float, float, float]:
    """Time ``step``; if it returns a callable, only that part is timed (bwd).

    At least ``reps`` samples and ``min_seconds`` of them (up to 20 * reps);
    with ``max_seconds``, stop once that much time went into the samples and
    there are ``min_reps`` of them (warm-up stops early the same way).
    """
    t_w = time.perf_counter()
    for k in range(warmup):
        r = step()
        if callable(r):
            r()
        if max_seconds is not None and time.perf_counter() - t_w > max_seconds / 2:
            break
    ts: list[float] = []
    t_start = time.perf_counter()
    t_end = t_start + min_seconds
    while True:
        now = time.perf_counter()
        if max_seconds is not None and len(ts) >= min_reps and now - t_start > max_seconds:
            break
        if len(ts) >= reps and (now >= t_end or len(ts) >= 20 * reps):
            break
        t0 = time.perf_counter()
        r = step()
        if callable(r):
            t0 = time.perf_counter()
            r()
        ts.append(time.perf_counter() - t0)
    return _quantiles(ts)


def time_gpu(step: Callable[[], Optional[Callable]], warmup_ms: Optional[float] = None,
             rep_ms: Optional[float] = None) -> tuple[float, float, float]:
    """Time ``step`` with triton's do_bench (``warmup_ms`` / ``rep_ms``: its
    warmup and repetition times, default do_bench's); if it returns a callable
    (bwd), only that is timed: the backward of one forward, run again each
    repetition (``retain_graph=True``)."""
    import triton.testing

    r = step()
    run = (lambda: r(retain_graph=True)) if callable(r) else step
    kw = {k: v for k, v in (("warmup", warmup_ms), ("rep", rep_ms)) if v is not None}
    q = triton.testing.do_bench(run, quantiles=[0.5, 0.25, 0.75], return_mode="median", **kw)
    return float(q[0]), float(q[1]), float(q[2])


def make_steps(fn, x, t, lam):
    """fwd (training-mode forward), bwd (backward only), fwd+bwd closures."""
    leaf = x.detach().clone().requires_grad_()

    def fwd():
        fn(leaf, t, lam)

    def bwd():
        leaf.grad = None
        out = fn(leaf, t, lam)

        def backward(**kwargs):
            leaf.grad = None  # a new gradient each time, never an accumulation
            out.backward(**kwargs)

        return backward

    def fwdbwd():
        leaf.grad = None
        fn(leaf, t, lam).backward()

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwdbwd}


def memcpy_ms(numel: int, dtype: torch.dtype, device: str, reps: int,
              gpu_warmup_ms: Optional[float] = None, gpu_rep_ms: Optional[float] = None) -> float:
    """Median time of copying numel elements into a preallocated buffer."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    if device == "cuda":
        return time_gpu(lambda: dst.copy_(src), gpu_warmup_ms, gpu_rep_ms)[0]
    return time_cpu(lambda: dst.copy_(src), reps, 3, 0.5, max_seconds=2.0)[0]


def make_batch(N: int, C: int, dtype: torch.dtype, device: str, seed: int = 0):
    """NER-like batch: ~70 % of valid rows are the majority class 0, 10 % ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g).to(dtype)
    t = torch.randint(0, C, (N,), generator=g)
    if C <= 64:
        t[torch.rand(N, generator=g) < 0.7] = 0
    t[torch.rand(N, generator=g) < 0.1] = IGNORE
    return x.to(device), t.to(device)


# ----------------------------------------------------------------- peak memory


def _nan(v) -> bool:
    return isinstance(v, float) and v != v


def _cpu_allocations(prof) -> Optional[list[tuple[int, int, int]]]:
    """(time_ns, address, +-bytes) of every CPU allocator event of a profile."""
    try:
        from torch._C._profiler import _EventType

        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, ImportError, RuntimeError):
        return None
    out = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.tag == _EventType.Allocation:
            f = n.extra_fields
            if str(f.device).startswith("cpu"):
                out.append((n.start_time_ns, int(f.ptr), int(f.alloc_size)))
        stack.extend(n.children)
    out.sort(key=lambda e: e[0])
    return out


def _cpu_peak_extra(step: Callable[[], None], grad_ptr: Callable[[], Optional[int]]) -> float:
    """Peak of live allocator bytes during ``step`` minus its gradient's allocation."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto, the profiler's backend, logs "USDT: ... profiler_start/stop" (and, on a
    # machine without a GPU, a "gpuGetDeviceCount failed" ERROR) to stderr at every
    # profile: read when the profiler first starts, level 6 silences it
    # (KINETO_LOG_LEVEL=0 in the environment shows everything).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = _cpu_allocations(prof)
    gptr = grad_ptr()
    if events is None:  # older/newer torch without the event tree: no addresses
        evs = sorted(((e.start_ns(), 0, e.nbytes()) for e in prof.profiler.kineto_results.events()
                      if e.name() == "[memory]"), key=lambda e: e[0])
        live = peak = 0
        for _, _, nb in evs:
            live += nb
            peak = max(peak, live)
        return float(max(0, peak - max(0, live)))  # what is still live at the end: the grad
    # the gradient = the last allocation at its address (an earlier temporary may
    # have used the same address and been freed)
    g_idx = max((i for i, (_, p, nb) in enumerate(events) if p == gptr and nb > 0), default=None)
    live = peak = 0
    for i, (_, _, nb) in enumerate(events):
        live += nb
        if g_idx is not None and i >= g_idx:
            peak = max(peak, live - events[g_idx][2])
        else:
            peak = max(peak, live)
    return float(peak)


def peak_extra_bytes(fn, x, t, lam, device: str) -> float:
    """Bytes one fwd+bwd holds at its peak beyond the logits and their gradient
    (the gradient counted only when it was freshly allocated: a gradient written
    into the logits' own storage, as Liger does, costs nothing extra)."""
    leaf = x.detach().clone().requires_grad_()
    for _ in range(1):  # warm-up (the timing already ran it): lazy inits, caches
        leaf.grad = None
        fn(leaf, t, lam).backward()
    leaf.grad = None
    gc.collect()

    def step():
        fn(leaf, t, lam).backward()

    def grad_ptr() -> Optional[int]:
        g = leaf.grad
        return None if g is None else g.untyped_storage().data_ptr()

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        g = leaf.grad
        fresh = 0
        if g is not None and g.untyped_storage().data_ptr() != leaf.untyped_storage().data_ptr():
            fresh = g.untyped_storage().nbytes()
        return float(max(0, peak - fresh))
    return _cpu_peak_extra(step, grad_ptr)


# ----------------------------------------------------------------- driver


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the architecture:
    every timing we report names it, since the development machines change."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_header(argv: list[str]) -> list[str]:
    import momkernels
    from momkernels import ops

    cpu = cpu_model()
    try:
        with open("/proc/meminfo") as f:
            mem = f" {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM,"
    except (OSError, ValueError, IndexError):
        mem = ""
    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                   if k.startswith("MOMKERNELS_") or k in ("OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE",
                                                           "ATEN_CPU_CAPABILITY"))
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{env + ' ' if env else ''}python -m momkernels bench {' '.join(argv)}`",
        f"- machine: {cpu}, {os.cpu_count()} cores,{mem} torch threads {torch.get_num_threads()}, "
        f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}",
        f"- versions: momkernels {momkernels.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}, extension {ops.build_info() or 'not loaded'}",
    ]
    if torch.cuda.is_available():
        lines.append(f"- gpu: {torch.cuda.get_device_name()}")
    return lines


def parse_shape(s: str) -> tuple[int, int]:
    n, c = s.lower().split("x")
    return int(n), int(c)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HEADLINE_SHAPES = ["8192x9", "4096x32000"]
QUICK_SHAPES = ["8192x9", "1024x32000"]
# NER batches (B x T = 32x128, 64x128, 256x128) x tag sets (CoNLL 9, 17, OntoNotes 37);
# MRC start/end (C = 2); LM vocabularies (Llama-2 32000, Llama-3 128256).
NER_SHAPES = [f"{n}x{c}" for c in (9, 17, 37) for n in (4096, 8192, 32768)]
MRC_SHAPES = ["8192x2", "32768x2"]
# CPU cap: N x C x 4 bytes of fp32 logits, and eager PyTorch holds the logits, their
# gradient and two more logits-sized temporaries (+ the bench's copy of the logits),
# about 5x the logits: 16384 x 32000 (2.1 GB) and 2048 x 128256 (1.05 GB) fit 24 GiB.
LM_SHAPES = ["1024x32000", "4096x32000", "16384x32000", "2048x128256"]
LM_SHAPES_GPU = ["4096x32000", "16384x32000", "4096x128256", "16384x128256"]
FULL_SHAPES = NER_SHAPES + MRC_SHAPES + LM_SHAPES  # kept for scripts that import it
ALL_COMBOS = [("ce", 1.0), ("ce", 0.175), ("focal", 0.175), ("dice", 0.175)]
# focal/dice only at one N per NER tag set and one LM shape (CPU time; bench/run_cpu_suite.sh)
FOCAL_DICE_SHAPES = ["8192x9", "8192x17", "8192x37", "4096x32000"]
SWEEP_DEFAULTS = {
    "N": (9, [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]),
    "C": (4096, [2, 9, 37, 128, 512, 2048, 8192, 32000, 128256]),
}


def full_grid(device: str, dtypes: list[str], losses: Optional[list[str]],
              lams: Optional[list[float]]) -> list[tuple[str, int, int, str, float]]:
    """(dtype, N, C, loss, lam) cases of ``--full``.

    Default: ce with lam 1 (plain CE drop-in) and 0.175 on every shape; focal
    and dice (lam 0.175) on FOCAL_DICE_SHAPES.  ``--losses`` /
    ``--lams`` given explicitly: their full product on every shape."""
    lm = LM_SHAPES_GPU if device == "cuda" else LM_SHAPES
    cases = []
    for dt in dtypes:
        for shape in NER_SHAPES + MRC_SHAPES + lm:
            N, C = parse_shape(shape)
            if losses or lams:
                combos = [(lo, la) for lo in (losses or ["ce"]) for la in (lams or [0.175])]
            else:
                combos = [(lo, la) for lo, la in ALL_COMBOS
                          if lo == "ce" or shape in FOCAL_DICE_SHAPES]
            cases += [(dt, N, C, lo, la) for lo, la in combos]
    return cases


def _print_row(row: Row) -> None:
    mem = ""
    if not _nan(row.peak_extra_MiB):
        mem = (f"  peak extra {row.peak_extra_MiB:8.2f} MiB "
               f"({row.peak_extra_pct_logits:.1f} % of logits)")
    print(f"{row.device} {row.dtype} N={row.N:>6} C={row.C:>6} {row.loss:>5} lam={row.lam:<5} "
          f"{row.competitor:>8} {row.mode:>7}: {row.median_ms:9.3f} ms "
          f"[{row.p25_ms:.3f}, {row.p75_ms:.3f}]  x{row.speedup_vs_eager:5.1f} vs eager{mem}",
          flush=True)


def _unloadable_backends(device: str, asked: Optional[list[str]]) -> dict[str, str]:
    """{backend: why it cannot run} for the momkernels backends a run must measure:
    ``asked`` (--backends), else the device's compiled ones (backend="auto"'s
    candidates: cpp on CPU; cpp and triton on CUDA), so that a benchmark of the
    product never quietly leaves the product out."""
    from momkernels.backends import AUTO_ORDER, unavailable_reason

    dev = torch.device(device)
    wanted = asked or AUTO_ORDER.get(dev.type, ())
    reasons = {b: unavailable_reason(b, dev) for b in wanted}
    return {b: why for b, why in reasons.items() if why is not None}


EAGER_AVX2 = "eager[avx2]"
EAGERS = ("eager", EAGER_AVX2)
# momkernels competitors beyond the backends: name -> (backend, label_smoothing)
EXTRA_BACKEND_COMPETITORS = {"triton+ls": ("triton", 0.1)}
COMPETITOR_CHOICES = ["eager", "compile", "cpp", "torch", "triton", "triton+ls", "liger"]


def _competitor_names(args, device: str, loss: str, lam: float) -> list[str]:
    """The competitors of one case, in measuring order (eager first: the
    speed-ups printed as rows come in need it)."""
    from momkernels import available_backends

    backends = [b for b in available_backends(device) if not args.backends or b in args.backends]
    names = ["eager"] + ([] if args.no_compile else ["compile"]) + backends
    if getattr(args, "competitors", None):
        extra = [n for n, (b, _) in EXTRA_BACKEND_COMPETITORS.items()
                 if b in available_backends(device) and loss == "ce"]
        names = [n for n in names + extra if n in args.competitors]
    if (device == "cuda" and loss == "ce" and lam == 1.0
            and (not getattr(args, "competitors", None) or "liger" in args.competitors)):
        names.append("liger")
    return names


def _competitor_fn(name: str, loss: str) -> Optional[Callable]:
    if name == "eager":
        return eager_loss_fn(loss)
    if name == "compile":
        return torch.compile(eager_loss_fn(loss), dynamic=False)
    if name == "liger":
        return liger_fn()
    if name in EXTRA_BACKEND_COMPETITORS:
        backend, ls = EXTRA_BACKEND_COMPETITORS[name]
        return momkernels_fn(backend, loss, label_smoothing=ls)
    return momkernels_fn(name, loss)


def _same_loss_as_eager(name: str) -> bool:
    return name not in EXTRA_BACKEND_COMPETITORS  # triton+ls: another loss


def set_speedups(rows: list[Row]) -> None:
    """speedup_vs_eager of every row: the faster eager median of its case and
    mode (``eager`` and, where measured, ``eager[avx2]``) / its median."""
    best: dict = {}
    for r in rows:
        if r.competitor in EAGERS:
            k = (r.device, r.dtype, r.N, r.C, r.loss, r.lam, r.mode)
            best[k] = min(best.get(k, math.inf), r.median_ms)
    for r in rows:
        b = best.get((r.device, r.dtype, r.N, r.C, r.loss, r.lam, r.mode))
        r.speedup_vs_eager = float("nan") if b is None else b / r.median_ms


def eager_isa_to_add(device: str) -> Optional[str]:
    """The ATEN_CPU_CAPABILITY to measure eager under as well, in a subprocess:
    "avx2" on a CPU whose default ATen kernels are AVX-512 ones (or anything
    above AVX2); None where the default already is AVX2 or below, or not x86."""
    if device != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    cap = torch.backends.cpu.get_cpu_capability()
    return None if cap in ("DEFAULT", "AVX2") else "avx2"


def eager_under_isa(args, cases, isa: str) -> list[Row]:
    """``eager`` of every case, measured by a subprocess under
    ``ATEN_CPU_CAPABILITY=isa`` with the same timing options; rows named
    ``eager[isa]``."""
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = os.path.join(tmp, "cases.json"), os.path.join(tmp, "rows.json")
        with open(cases_path, "w") as f:
            json.dump([list(c) for c in cases], f)
        cmd = [sys.executable, "-m", "momkernels.benchmark", "--eager-worker", cases_path, out_path,
               "--device", "cpu", "--reps", str(args.reps), "--warmup", str(args.warmup),
               "--min-seconds", str(args.min_seconds), "--modes", *args.modes]
        if args.max_seconds is not None:
            cmd += ["--max-seconds", str(args.max_seconds)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = {**os.environ, "ATEN_CPU_CAPABILITY": isa}
        print(f"eager under ATEN_CPU_CAPABILITY={isa} (subprocess) ...", flush=True)
        r = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE)
        if r.returncode != 0:
            raise RuntimeError(f"eager under ATEN_CPU_CAPABILITY={isa} failed "
                               f"({r.returncode}):\n{r.stdout[-2000:]}")
        with open(out_path) as f:
            data = json.load(f)
    if data["capability"].lower() != isa:
        raise RuntimeError(f"ATEN_CPU_CAPABILITY={isa} was not honoured: the subprocess ran "
                           f"{data['capability']} kernels")
    rows = [Row(**d) for d in data["rows"]]
    for r in rows:
        r.competitor = f"eager[{isa}]"
    return rows


def _eager_worker(cases_path: str, out_path: str, args) -> int:
    """--eager-worker: time eager only (no memory, no compile), write rows as JSON."""
    with open(cases_path) as f:
        cases = [tuple(c) for c in json.load(f)]
    args.no_compile, args.no_memory, args.competitors = True, True, ["eager"]
    rows = run(args, cases)
    with open(out_path, "w") as f:
        json.dump({"capability": torch.backends.cpu.get_cpu_capability(),
                   "rows": [asdict(r) for r in rows]}, f)
    return 0


def run(args, cases: Optional[list[tuple[str, int, int, str, float]]] = None,
        prior: Optional[list[Row]] = None,
        sink: Optional[Callable[[list[Row]], None]] = None,
        skipped: Optional[list[str]] = None) -> list[Row]:
    """Measure every case (dtype, N, C, loss, lam) for every competitor and mode.

    ``prior``: rows measured elsewhere (eager[avx2]), counted in the speed-ups.
    ``sink(rows)`` is called after every case (the CSV written so far).  With
    ``args.time_budget``, the ``compile`` competitor is measured in a second
    pass over the cases, and no measurement starts after the budget (the ones
    left out are appended to ``skipped``)."""
    device = args.device
    if cases is None:
        cases = [(dt, *parse_shape(s), lo, la) for dt in args.dtypes for s in args.shapes
                 for lo in args.losses for la in args.lams]
    budget = getattr(args, "time_budget", None)
    t_start = time.perf_counter()
    gpu_kw = dict(warmup_ms=getattr(args, "gpu_warmup_ms", None),
                  rep_ms=getattr(args, "gpu_rep_ms", None))
    passes = [lambda n: n != "compile", lambda n: n == "compile"] if budget else [lambda n: True]
    rows: list[Row] = []
    prior = list(prior or [])
    cpu = cpu_model()
    batches: dict = {}
    copy_ms_of: dict = {}
    eager_value: dict = {}
    skipped = [] if skipped is None else skipped
    for in_pass in passes:
        for dtype_name, N, C, loss, lam in cases:
            names = [n for n in _competitor_names(args, device, loss, lam) if in_pass(n)]
            if not names:
                continue
            key = (dtype_name, N, C)
            if key not in batches:
                batches.clear()  # one batch alive at a time (memory)
                x = t = None
                gc.collect()
                x, t = make_batch(N, C, DTYPES[dtype_name], device)
                if key not in copy_ms_of:
                    copy_ms_of[key] = memcpy_ms(N * C, DTYPES[dtype_name], device, args.reps,
                                                gpu_kw["warmup_ms"], gpu_kw["rep_ms"])
                batches[key] = (x, t)
            x, t = batches[key]
            copy_ms = copy_ms_of[key]
            if (key, loss, lam) not in eager_value:  # float32 eager loss: the sanity check
                with torch.no_grad():
                    eager_value[(key, loss, lam)] = float(eager_loss_fn(loss)(x.float(), t, lam))
            logits_bytes = N * C * x.element_size()
            bytes_fb = 3 * logits_bytes  # fwd reads, bwd reads + writes
            for name in names:
                if budget and time.perf_counter() - t_start > budget:
                    skipped.append(f"{dtype_name} {N}x{C} {loss} lam={lam} {name}")
                    print(f"{device} {dtype_name} N={N:>6} C={C:>6} {name}: skipped "
                          "(--time-budget spent)", flush=True)
                    continue
                fn = _competitor_fn(name, loss)
                if fn is None:
                    continue
                compile_s = float("nan")
                if name == "compile":
                    torch._dynamo.reset()
                    t0 = time.perf_counter()
                    leaf = x.detach().clone().requires_grad_()
                    fn(leaf, t, lam).backward()
                    compile_s = time.perf_counter() - t0
                    del leaf
                diff = float("nan")
                if _same_loss_as_eager(name):  # (a leaf as in the timing: no recompilation)
                    out = fn(x.detach().clone().requires_grad_(), t, lam).detach()
                    diff = abs(float(out.float()) - eager_value[(key, loss, lam)])
                    del out
                steps = make_steps(fn, x, t, lam)
                fb_row = None
                for mode in [m for m in steps if m in args.modes]:
                    step = steps[mode]
                    if device == "cuda":
                        med, p25, p75 = time_gpu(step, **gpu_kw)
                    else:
                        med, p25, p75 = time_cpu(step, args.reps, args.warmup, args.min_seconds,
                                                 args.max_seconds)
                    row = Row(device, dtype_name, N, C, loss, lam, name, mode, med, p25, p75,
                              abs_diff_vs_eager=diff, cpu=cpu)
                    if mode == "fwd+bwd":
                        row.bandwidth_frac = (bytes_fb / (med * 1e-3)) / (
                            2 * logits_bytes / (copy_ms * 1e-3))
                        fb_row = row
                    if name == "compile":
                        row.compile_s = compile_s
                    rows.append(row)
                    set_speedups(prior + rows)
                    if mode != "fwd+bwd" or args.no_memory:
                        _print_row(row)
                # free the timing copy of the logits and its gradient before the memory step
                steps.clear()
                step = None
                if fb_row is not None and not args.no_memory:
                    gc.collect()
                    extra = peak_extra_bytes(fn, x, t, lam, device)
                    fb_row.peak_extra_MiB = extra / 2**20
                    fb_row.peak_extra_pct_logits = 100 * extra / logits_bytes
                    _print_row(fb_row)
            if sink is not None:
                sink(prior + rows)
    return rows


# ----------------------------------------------------------------- outputs


def _fmt_mem(mib: float, pct: float) -> str:
    if _nan(mib):
        return ""
    return f"{mib:.1f} MiB ({pct:.0f} %)" if mib >= 10 else f"{mib:.2f} MiB ({pct:.1f} %)"


def headline_tables(rows: list[Row]) -> list[str]:
    """Compact fwd+bwd tables: time per competitor (speed-up vs eager) and peak extra memory."""
    fb = [r for r in rows if r.mode == "fwd+bwd"]
    if not fb:
        return []
    comps = list(dict.fromkeys(r.competitor for r in fb))
    cases = list(dict.fromkeys((r.dtype, r.N, r.C, r.loss, r.lam) for r in fb))
    get = {(r.dtype, r.N, r.C, r.loss, r.lam, r.competitor): r for r in fb}
    out = ["## Headline: forward + backward", "",
           "Median ms of one forward + backward, speed-up over eager in parentheses.", "",
           "| dtype | N | C | loss | lam | " + " | ".join(comps) + " |",
           "|---|---:|---:|---|---|" + "---:|" * len(comps)]
    for c in cases:
        cells = []
        for comp in comps:
            r = get.get((*c, comp))
            cells.append("" if r is None else f"{r.median_ms:.3f} ({r.speedup_vs_eager:.1f}x)")
        out.append(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | " + " | ".join(cells) + " |")
    if any(not _nan(r.peak_extra_MiB) for r in fb):
        out += ["", "## Peak extra memory of forward + backward", "",
                "Bytes held at the peak of one forward + backward beyond the logits and their "
                "gradient, MiB (% of the logits' size); target for momkernels: <= 5 %.", "",
                "| dtype | N | C | loss | lam | logits MiB | " + " | ".join(comps) + " |",
                "|---|---:|---:|---|---|---:|" + "---:|" * len(comps)]
        for c in cases:
            cells = []
            for comp in comps:
                r = get.get((*c, comp))
                cells.append("" if r is None else _fmt_mem(r.peak_extra_MiB, r.peak_extra_pct_logits))
            esize = torch.empty((), dtype=DTYPES[c[0]]).element_size()
            out.append(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} | {c[4]} | "
                       f"{c[1] * c[2] * esize / 2**20:.1f} | " + " | ".join(cells) + " |")
    return out + [""]


def _ordered(rows: list[Row]) -> list[Row]:
    """Rows grouped by case, in the order the cases were first measured, each
    case's competitors in measuring order (eager[avx2] after eager)."""
    case_of = lambda r: (r.device, r.dtype, r.N, r.C, r.loss, r.lam)  # noqa: E731
    first = {}
    for r in rows:
        if r.competitor != EAGER_AVX2:
            first.setdefault(case_of(r), len(first))
    for r in rows:
        first.setdefault(case_of(r), len(first))

    def comp_rank(r):
        if r.competitor == "eager":
            return 0
        return 1 if r.competitor in EAGERS else 2

    idx = {id(r): i for i, r in enumerate(rows)}
    return sorted(rows, key=lambda r: (first[case_of(r)], comp_rank(r), idx[id(r)]))


def write_csv(rows: list[Row], out_dir: str, tag: str) -> str:
    """<out_dir>/<tag>.csv: one line per measurement (every field of Row, the CPU
    model included)."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, f"{tag}.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(Row)])
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    return csv_path


def write_outputs(rows: list[Row], out_dir: str, header: list[str], tag: str,
                  notes: Optional[list[str]] = None) -> None:
    csv_path = write_csv(rows, out_dir, tag)
    md_path = os.path.join(out_dir, f"{tag}.md")
    with open(md_path, "w") as f:
        f.write(f"# Benchmark: {tag}\n\n" + "\n".join(header) + "\n\n")
        if notes:
            f.write("\n".join(notes) + "\n\n")
        if any(r.mode == "fwd+bwd" for r in rows):
            f.write("\n".join(headline_tables(rows)) + "\n## All measurements\n\n")
        f.write("Median ms [25th, 75th percentile]; speed-up = the faster eager median (eager, "
                "and eager[avx2] where measured) / this median; "
                "bandwidth = (3 passes over the logits) / time, as a fraction of a measured "
                "copy of the same bytes (fwd+bwd only); peak extra = bytes held at the peak of "
                "one fwd+bwd beyond the logits and their gradient (fwd+bwd only); |diff| = "
                "|loss - eager's float32 loss of the same batch| (a sanity check; empty: another "
                "loss).\n\n")
        f.write("| dtype | N | C | loss | lam | competitor | mode | median ms | IQR ms | "
                "speed-up vs eager | bandwidth / memcpy | peak extra MiB | peak extra % of logits | "
                "|diff| vs eager |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            bw = "" if _nan(r.bandwidth_frac) else f"{100 * r.bandwidth_frac:.0f} %"
            comp = "" if _nan(r.compile_s) else f" (compile {r.compile_s:.1f} s)"
            mib = "" if _nan(r.peak_extra_MiB) else f"{r.peak_extra_MiB:.2f}"
            pct = "" if _nan(r.peak_extra_pct_logits) else f"{r.peak_extra_pct_logits:.1f} %"
            f.write(f"| {r.dtype} | {r.N} | {r.C} | {r.loss} | {r.lam} | {r.competitor}{comp} | "
                    f"{r.mode} | {r.median_ms:.3f} | {r.p25_ms:.3f}-{r.p75_ms:.3f} | "
                    f"{r.speedup_vs_eager:.1f}x | {bw} | {mib} | {pct} | "
                    f"{'' if _nan(r.abs_diff_vs_eager) else f'{r.abs_diff_vs_eager:.2g}'} |\n")
    print(f"wrote {csv_path} and {md_path}")


def _read_fwdbwd(csv_path: str) -> list[dict]:
    with open(csv_path) as f:
        return [r for r in csv.DictReader(f) if r["mode"] == "fwd+bwd"]


def plot(csv_path: str, png_path: str) -> None:
    """fwd+bwd time per competitor and shape (log scale), speed-up over eager on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_fwdbwd(csv_path)
    groups = sorted({(r["loss"], r["lam"], r["dtype"]) for r in rows})
    nshapes = max(len({(r["N"], r["C"]) for r in rows if (r["loss"], r["lam"], r["dtype"]) == g})
                  for g in groups)
    ncols = 1 if nshapes > 4 else min(len(groups), 4)
    nrows = math.ceil(len(groups) / ncols)
    width_in = max(6.5, 1.1 * nshapes + 1.5) if ncols == 1 else 6.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(width_in * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (loss, lam, dtype) in zip(axes.flat, groups):
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
                            ha="center", va="bottom", fontsize=6 if len(shapes) > 4 else 7)
        ax.set_yscale("log")
        prefix = "" if len(shapes) > 4 else "N x C = "
        ax.set_xticks(range(len(shapes)), [prefix + s for s in shapes],
                      rotation=30 if len(shapes) > 4 else 0, fontsize=8)
        ax.set_ylabel("fwd+bwd median (ms, log)")
        ax.set_title(f"{dtype}, loss={loss}, lam={lam} (labels: speed-up vs eager)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def plot_sweep(csv_path: str, png_path: str, axis: str) -> None:
    """Sweep over N (or C): fwd+bwd time (log-log), speed-up over eager and peak
    extra memory (% of the logits) against N (or C), one line per competitor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_fwdbwd(csv_path)
    fixed = "C" if axis == "N" else "N"
    groups = sorted({(r["loss"], r["lam"], r["dtype"], r[fixed]) for r in rows})
    has_mem = any(r.get("peak_extra_pct_logits") not in (None, "", "nan") for r in rows)
    ncols = 3 if has_mem else 2
    fig, axes = plt.subplots(len(groups), ncols, figsize=(5.2 * ncols, 4.0 * len(groups)),
                             squeeze=False)
    for axrow, (loss, lam, dtype, fv) in zip(axes, groups):
        sel = [r for r in rows if (r["loss"], r["lam"], r["dtype"], r[fixed]) == (loss, lam, dtype, fv)]
        for comp in dict.fromkeys(r["competitor"] for r in sel):
            pts = sorted((int(r[axis]), float(r["median_ms"]), float(r["speedup_vs_eager"]),
                          float(r.get("peak_extra_pct_logits") or "nan"))
                         for r in sel if r["competitor"] == comp)
            xs = [p[0] for p in pts]
            style = dict(marker="o", ms=3, label=comp)
            axrow[0].plot(xs, [p[1] for p in pts], **style)
            axrow[1].plot(xs, [p[2] for p in pts], **style)
            if has_mem:
                axrow[2].plot(xs, [p[3] for p in pts], **style)
        title = f"{dtype}, {fixed} = {fv}, loss={loss}, lam={lam}"
        axrow[0].set(xscale="log", yscale="log", xlabel=axis, ylabel="fwd+bwd median (ms)",
                     title=title)
        axrow[1].set(xscale="log", yscale="log", xlabel=axis, ylabel="speed-up over eager (x)",
                     title="speed-up over eager PyTorch")
        axrow[1].axhline(1.0, color="grey", lw=0.8, ls="--")
        if has_mem:
            axrow[2].set_xscale("log")
            axrow[2].set_yscale("symlog", linthresh=1.0)
            axrow[2].set_ylim(bottom=0)
            axrow[2].set(xlabel=axis, ylabel="peak extra memory (% of logits)",
                         title="fwd+bwd memory beyond logits + grad (target 5 %)")
            axrow[2].axhline(5.0, color="grey", lw=0.8, ls="--")
        for ax in axrow:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {png_path}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m momkernels bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help=f"smoke run (< 1 min): {' '.join(QUICK_SHAPES)}, few repetitions")
    mode.add_argument("--full", action="store_true",
                      help="the grid: NER/MRC/LM shapes x fp32, bf16 x ce (lam 1, 0.175), focal, "
                           "dice (default: the two headline shapes)")
    mode.add_argument("--sweep", choices=["N", "C"],
                      help="fwd+bwd time against N at fixed C (--sweep-at, default 9) or against "
                           "C at fixed N (default 4096); writes <tag>_vs_N/C.{csv,md,png}")
    p.add_argument("--sweep-at", type=int, help="the fixed C (--sweep N) or N (--sweep C)")
    p.add_argument("--sweep-values", type=int, nargs="+", help="the N (or C) values of a sweep")
    p.add_argument("--shapes", nargs="+", help="NxC shapes, e.g. 8192x9 4096x32000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", "--dtypes", dest="dtypes", nargs="+", choices=list(DTYPES),
                   help="default fp32 (--full: fp32 bf16)")
    p.add_argument("--losses", nargs="+", choices=["ce", "focal", "dice"], help="default ce")
    p.add_argument("--lams", nargs="+", type=float, help="default 0.175")
    p.add_argument("--modes", nargs="+", choices=["fwd", "bwd", "fwd+bwd"],
                   help="default all three (--sweep: fwd+bwd)")
    p.add_argument("--backends", nargs="+", choices=["cpp", "triton", "torch"],
                   help="momkernels backends (default: all available; the device's compiled "
                        "ones, cpp on CPU and cpp, triton on CUDA, must load)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile competitor")
    p.add_argument("--competitors", nargs="+", choices=COMPETITOR_CHOICES,
                   help="measure only these (where they apply: liger for plain CE on CUDA); "
                        "triton+ls (Triton with label smoothing 0.1) only when named here")
    p.add_argument("--no-eager-isa", action="store_true",
                   help="CPU: do not also time eager under ATEN_CPU_CAPABILITY=avx2 (done by "
                        "default when ATen's default kernels are above AVX2)")
    p.add_argument("--time-budget", type=float,
                   help="seconds: start no measurement after this; compile measured last")
    p.add_argument("--gpu-warmup-ms", type=float, help="GPU: do_bench warmup (ms)")
    p.add_argument("--gpu-rep-ms", type=float, help="GPU: do_bench repetition time (ms)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--eager-worker", nargs=2, metavar=("CASES_JSON", "OUT_JSON"),
                   help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--reps", type=int, help="samples per measurement (default 30; --quick 3)")
    p.add_argument("--warmup", type=int, help="warm-up calls (default 5; --quick 1)")
    p.add_argument("--min-seconds", type=float,
                   help="time per measurement (CPU; default 1.0, --quick 0.1)")
    p.add_argument("--max-seconds", type=float,
                   help="CPU: stop a measurement after this long once it has 3 samples "
                        "(default: no limit; --quick 1)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/bench; bench/run_cpu_suite.sh writes "
                        "docs/bench with --out docs/bench)")
    p.add_argument("--tag", default=None, help="output file stem")
    p.add_argument("--plot-only", metavar="CSV", help="only draw the PNG of an existing CSV "
                   "(a sweep's CSV, named *_vs_N.csv / *_vs_C.csv, gets the sweep plot)")
    args = p.parse_args(argv)
    if args.plot_only:
        stem = os.path.splitext(args.plot_only)[0]
        if stem.endswith("_vs_N") or stem.endswith("_vs_C"):
            plot_sweep(args.plot_only, stem + ".png", stem[-1])
        else:
            plot(args.plot_only, stem + ".png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = dict(reps=3, warmup=1, min_seconds=0.1, max_seconds=1.0)
    normal = dict(reps=30, warmup=5, min_seconds=1.0, max_seconds=None)
    for k, v in (quick if args.quick else normal).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.modes = args.modes or (["fwd+bwd"] if args.sweep else ["fwd", "bwd", "fwd+bwd"])
    args.dtypes = args.dtypes or (["fp32", "bf16"] if args.full else ["fp32"])
    cases = None
    notes: list[str] = []
    if args.sweep:
        fixed, values = SWEEP_DEFAULTS[args.sweep]
        fixed = args.sweep_at or fixed
        values = args.sweep_values or values
        shapes = [(v, fixed) if args.sweep == "N" else (fixed, v) for v in values]
        args.shapes = [f"{n}x{c}" for n, c in shapes]
    elif args.full and not args.shapes:
        cases = full_grid(args.device, args.dtypes, args.losses, args.lams)
        notes.append("Grid: NER batches N = 4096, 8192, 32768 with C = 9, 17, 37; MRC start/end "
                     "C = 2; LM vocabularies " + ", ".join(
                         LM_SHAPES_GPU if args.device == "cuda" else LM_SHAPES)
                     + (" (CPU cap: eager PyTorch holds ~5 logits-sized buffers, so N x C is "
                        "capped to fit 24 GiB)" if args.device != "cuda" else "")
                     + ". ce with lam = 1 (plain cross-entropy drop-in) and 0.175 on every "
                     "shape; focal and dice (lam = 0.175) on " + ", ".join(FOCAL_DICE_SHAPES)
                     + ".")
    else:
        args.shapes = args.shapes or (QUICK_SHAPES if args.quick else HEADLINE_SHAPES)
    args.losses = args.losses or ["ce"]
    args.lams = args.lams or [0.175]
    if args.eager_worker:
        return _eager_worker(*args.eager_worker, args)
    asked = args.backends
    if asked is None and args.competitors:  # the backends among the competitors
        asked = sorted({EXTRA_BACKEND_COMPETITORS.get(c, (c,))[0] for c in args.competitors}
                       & {"cpp", "triton", "torch"})
    missing = _unloadable_backends(args.device, asked) if asked != [] else {}
    if missing:
        print("python -m momkernels bench: cannot measure "
              + "; ".join(f"backend {b!r} on {args.device}:\n{why}" for b, why in missing.items())
              + f"\n(momkernels was imported from {os.path.dirname(os.path.abspath(__file__))}; "
              "in a checkout, `bash tools/bootstrap.sh` builds it in place. --backends "
              "names the backends to measure)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    out = args.out or os.path.join("runs", "bench")
    dtag = "_".join(args.dtypes)
    tag = args.tag or (f"{args.device}_full" if args.full else
                       f"{args.device}_{dtag}{'_quick' if args.quick else ''}")
    if args.sweep:
        tag = f"{tag}_vs_{args.sweep}"
    if cases is None:
        cases = [(dt, *parse_shape(s), lo, la) for dt in args.dtypes for s in args.shapes
                 for lo in args.losses for la in args.lams]
    prior: list[Row] = []
    isa = None if args.no_eager_isa or (args.competitors and "eager" not in args.competitors) \
        else eager_isa_to_add(args.device)
    if isa is not None:
        prior = eager_under_isa(args, cases, isa)
        for r in prior:
            _print_row(r)
    skipped: list[str] = []
    rows = run(args, cases, prior=prior, sink=lambda rs: write_csv(rs, out, tag), skipped=skipped)
    rows = _ordered(prior + rows)
    set_speedups(rows)
    header = machine_header(argv) + [f"- wall time of this run: {time.perf_counter() - t_start:.0f} s"]
    if isa is not None:
        header.append(f"- eager measured twice: `eager` under the default ATen CPU capability "
                      f"({torch.backends.cpu.get_cpu_capability()}), `eager[{isa}]` in a "
                      f"subprocess with ATEN_CPU_CAPABILITY={isa}; speed-ups are over the faster "
                      "of the two")
    if skipped:
        notes.append(f"Not measured (--time-budget {args.time_budget:g} s spent): "
                     + "; ".join(skipped) + ".")
    write_outputs(rows, out, header, tag, notes)
    csv_path = os.path.join(out, f"{tag}.csv")
    if args.no_plot:
        return 0
    try:
        if args.sweep:
            plot_sweep(csv_path, os.path.join(out, f"{tag}.png"), args.sweep)
        else:
            plot(csv_path, os.path.join(out, f"{tag}.png"))
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    return 0


if __name__ == "__main__":  # python -m momkernels.benchmark (the eager[avx2] subprocess)
    sys.exit(main())
