"""GPU benchmark of the MoM loss: momkernels' backends against eager PyTorch,
torch.compile of the same eager code and (if importable) Liger-Kernel's
cross-entropy, for fwd, bwd and fwd+bwd, with achieved bandwidth compared to a
measured device-to-device copy of the same bytes.

    python bench/gpu_bench.py --out OUT_DIR [--quick] [--time-budget SECONDS]

Writes OUT_DIR/gpu_bench.csv (one row per measurement, appended as it goes, so
a run cut short keeps what it measured) and OUT_DIR/gpu_bench.md (markdown
table under a line naming the GPU and the versions).  Times are triton.testing.do_bench medians (ms)
with the 20th/80th percentiles.

Bytes counted per call (the minimum traffic of a fused kernel): fwd reads the
logits once; bwd reads them and writes the gradient; fwd+bwd is the sum.  The
copy reference is `dst.copy_(src)` of the logits, counted as read + write.

The loss measured is the MoM loss with lam = 0.175, o_index = 0, ignored rows
(-100) at ~10 %, mean reduction.  Eager PyTorch:
    l = F.cross_entropy(x, t, reduction="none")          # 0 on ignored rows
    (lam * l.sum() + (1 - lam) * (l * (t == o)).sum()) / (t != -100).sum()
Liger-Kernel computes plain cross-entropy (lam = 1) and writes the gradient
into the logits during the forward, so its "bwd" is nearly free and its "fwd"
already contains the gradient; compare its fwd+bwd.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import sys
import time

SHAPES = [(8192, 9), (8192, 37), (16384, 32000), (16384, 128256)]
DTYPES = ["bfloat16", "float32"]
MODES = ["fwd", "bwd", "fwd+bwd"]
LAM, O_INDEX, IGNORE = 0.175, 0, -100
FIELDS = ["N", "C", "dtype", "impl", "mode", "ms", "ms_p20", "ms_p80", "bytes", "GBps",
          "copy_GBps", "frac_of_copy", "peak_MiB", "peak_extra_MiB", "peak_extra_pct_logits",
          "max_abs_diff_vs_eager", "note"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmark of momkernels' MoM loss "
                                 "(see the module docstring)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_out",
                    help="output folder (default: $OUT or ./gpu_out)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, small shapes only")
    ap.add_argument("--time-budget", type=float, default=150.0,
                    help="stop starting new measurements after this many seconds (default 150)")
    ap.add_argument("--impls", default="cpp,triton,triton+ls,eager,compile,liger",
                    help="comma-separated subset of cpp,triton,triton+ls,eager,compile,liger "
                         "(triton+ls: label smoothing 0.1, the row-regime forward with the "
                         "most registers)")
    ap.add_argument("--shapes", default=None, help="e.g. 8192x9,16384x32000 (default: all)")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--warmup", type=int, default=10, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time, ms")
    ap.add_argument("--device", default="cuda",
                    help="'cuda' (default); 'cpu' only smoke-tests this script (tiny shapes, "
                         "wall-clock timing, no triton needed)")
    return ap.parse_args(argv)


DEV = "cuda"


# ----------------------------------------------------------------- implementations


def eager_mom(x, t):
    import torch.nn.functional as F

    ell = F.cross_entropy(x, t, reduction="none", ignore_index=IGNORE)
    valid = (t != IGNORE).sum()
    s_o = (ell * (t == O_INDEX)).sum()
    return (LAM * ell.sum() + (1.0 - LAM) * s_o) / valid


def make_impls(names, torch):
    """name -> (loss function of (x, t), note); unavailable ones -> (None, why)."""
    impls = {}
    import momkernels

    avail = momkernels.available_backends(DEV)
    for name, b, ls in (("cpp", "cpp", 0.0), ("triton", "triton", 0.0),
                        ("triton+ls", "triton", 0.1)):
        if name not in names:
            continue
        if b in avail:
            impls[name] = (lambda x, t, b=b, ls=ls: momkernels.mom_cross_entropy(
                x, t, LAM, o_index=O_INDEX, ignore_index=IGNORE, label_smoothing=ls, backend=b),
                f"label_smoothing={ls}" if ls else "")
        else:
            impls[name] = (None, f"backend {b!r} unavailable on {DEV}")
    if "eager" in names:
        impls["eager"] = (eager_mom, "F.cross_entropy(none)+mask+sums")
    if "compile" in names:
        impls["compile"] = (torch.compile(eager_mom, dynamic=False), "torch.compile(eager)")
    if "liger" in names:
        try:
            from liger_kernel.transformers import LigerCrossEntropyLoss

            ce = LigerCrossEntropyLoss(ignore_index=IGNORE)
            impls["liger"] = (lambda x, t: ce(x, t), "plain CE (lam=1), grad in fwd, in place")
        except Exception as e:  # noqa: BLE001
            impls["liger"] = (None, f"not importable: {type(e).__name__}: {e}")
    return impls


# ----------------------------------------------------------------- measurement


def bench_ms(fn, warmup, rep):
    if DEV != "cuda":  # smoke test of the script on CPU: plain wall clock
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return ts[1], ts[0], ts[2]
    import triton.testing

    q = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return tuple(float(v) for v in q)


def copy_gbps(nbytes, torch, warmup, rep):
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    ms, _, _ = bench_ms(lambda: dst.copy_(src), warmup, rep)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def make_data(N, C, dtype, torch):
    """Logits ~ 3 N(0, 1) and NER-like targets: 70 % class 0, 10 % ignored (seeded)."""
    g = torch.Generator(device=DEV).manual_seed(0)
    x0 = torch.randn(N, C, device=DEV, dtype=dtype, generator=g) * 3
    t = torch.randint(0, C, (N,), device=DEV, generator=g)
    u = torch.rand(N, device=DEV, generator=g)
    t = torch.where(u < 0.7, torch.zeros_like(t), t)
    t = torch.where(u > 0.9, torch.full_like(t, IGNORE), t)
    return x0, t


def measure(name, fn, N, C, dtype_name, torch, args, copy_bw, writer, rows, eager_loss):
    x0, t = make_data(N, C, getattr(torch, dtype_name), torch)
    esize = x0.element_size()
    logits_bytes = N * C * esize
    out = []
    for mode in MODES:
        x = x0.clone().requires_grad_(True)
        if DEV == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        note = ""
        diff = float("nan")
        try:
            loss = fn(x, t)
            if mode == "fwd" and eager_loss is not None:
                diff = abs(float(loss.float()) - eager_loss)
            if mode == "fwd":
                ms = bench_ms(lambda: fn(x, t), args.warmup, args.rep)
                nbytes = logits_bytes
            elif mode == "bwd":
                ms = bench_ms(lambda: torch.autograd.grad(loss, x, retain_graph=True),
                              args.warmup, args.rep)
                nbytes = 2 * logits_bytes
            else:
                def step():
                    ll = fn(x, t)
                    torch.autograd.grad(ll, x)
                ms = bench_ms(step, args.warmup, args.rep)
                nbytes = 3 * logits_bytes
            del loss
            peak = torch.cuda.max_memory_allocated() / 2**20 if DEV == "cuda" else float("nan")
            extra = float("nan")
            if mode == "fwd+bwd":
                # the same definition as `python -m momkernels bench`: the peak of one
                # fwd+bwd beyond the logits and a freshly allocated gradient
                from momkernels.benchmark import peak_extra_bytes

                extra = peak_extra_bytes(lambda xx, tt, lam: fn(xx, tt), x0, t, LAM, DEV)
            gbps = nbytes / (ms[0] * 1e-3) / 1e9
            row = dict(N=N, C=C, dtype=dtype_name, impl=name, mode=mode, ms=f"{ms[0]:.4f}",
                       ms_p20=f"{ms[1]:.4f}", ms_p80=f"{ms[2]:.4f}", bytes=nbytes,
                       GBps=f"{gbps:.1f}", copy_GBps=f"{copy_bw:.1f}",
                       frac_of_copy=f"{gbps / copy_bw:.3f}", peak_MiB=f"{peak:.0f}",
                       peak_extra_MiB=f"{extra / 2**20:.2f}",
                       peak_extra_pct_logits=f"{100 * extra / logits_bytes:.1f}",
                       max_abs_diff_vs_eager=f"{diff:.3g}", note=note)
        except Exception as e:  # noqa: BLE001
            row = dict(N=N, C=C, dtype=dtype_name, impl=name, mode=mode,
                       note=f"FAILED {type(e).__name__}: {str(e)[:200]}")
        writer.writerow(row)
        rows.append(row)
        out.append(row)
        print("  " + " ".join(f"{k}={row.get(k, '')}" for k in
                              ("impl", "mode", "ms", "GBps", "frac_of_copy", "peak_MiB", "peak_extra_MiB",
                               "max_abs_diff_vs_eager", "note")), flush=True)
        del x
    del x0, t
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return out


def write_markdown(path, rows, env):
    lines = ["# momkernels GPU benchmark", "", env, "",
             "Median ms (triton.testing.do_bench); GB/s = minimum bytes of a fused kernel / "
             "time; 'copy' = fraction of a measured device-to-device copy's bandwidth.", "",
             "Peak extra = bytes held at the peak of one fwd+bwd beyond the logits and their "
             "gradient (fwd+bwd rows), MiB and % of the logits.", "",
             "| N | C | dtype | mode | impl | ms | GB/s | of copy | peak MiB | peak extra MiB | "
             "extra % of logits | note |",
             "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    def key(r):
        mode = MODES.index(r["mode"]) if r["mode"] in MODES else len(MODES)
        return (int(r["N"]), int(r["C"]), r["dtype"], mode, r["impl"])

    for r in sorted(rows, key=key):
        lines.append(f"| {r['N']} | {r['C']} | {r['dtype']} | {r['mode']} | {r['impl']} | "
                     f"{r.get('ms', '')} | {r.get('GBps', '')} | {r.get('frac_of_copy', '')} | "
                     f"{r.get('peak_MiB', '')} | {r.get('peak_extra_MiB', '')} | "
                     f"{r.get('peak_extra_pct_logits', '')} | {r.get('note', '')} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    global DEV
    args = parse_args(argv)
    t_start = time.time()
    import torch

    os.makedirs(args.out, exist_ok=True)
    DEV = args.device
    if DEV == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure (--device cpu smoke-tests the "
              "script)", file=sys.stderr)
        return 2
    import momkernels

    names = [s.strip() for s in args.impls.split(",") if s.strip()]
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.quick:
        shapes = [s for s in shapes if s[1] <= 32000]
        args.rep = min(args.rep, 20)
    if DEV != "cuda" and not args.shapes:
        shapes = [(256, 9), (16, 3000)]
    dtypes = [d for d in args.dtypes.split(",") if d]
    if DEV == "cuda":
        props = torch.cuda.get_device_properties(0)
        device_name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        device_name = f"{DEV} (smoke test, not a benchmark)"
    env = (f"{device_name}, torch {torch.__version__}, "
           f"CUDA {torch.version.cuda}, momkernels {momkernels.__version__} "
           f"{momkernels.ops.build_info()}, python {platform.python_version()}")
    try:
        import triton

        env += f", triton {triton.__version__}"
    except ImportError:
        if DEV == "cuda":
            print("gpu_bench: triton is needed for triton.testing.do_bench", file=sys.stderr)
            return 2
    print(env, flush=True)  # also the header of gpu_bench.md
    try:  # one compiled graph per shape and dtype (dynamic=False)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    except AttributeError:
        pass
    impls = make_impls(names, torch)
    csv_path = os.path.join(args.out, "gpu_bench.csv")
    rows = []
    # Two passes over the shapes: the fused kernels and eager first (cheap), then
    # the implementations that compile per shape, so that a time budget spent
    # on compilation never costs the large-vocabulary rows of the first pass.
    fused = ("cpp", "triton", "triton+ls", "eager")
    passes = [[n for n in names if n in fused], [n for n in names if n not in fused]]
    copy_cache, eager_cache = {}, {}
    with open(csv_path, "w", newline="") as fcsv:
        writer = csv.DictWriter(fcsv, fieldnames=FIELDS)
        writer.writeheader()
        for pass_names in passes:
            for (N, C) in shapes:
                for dtype_name in dtypes:
                    key = (N, C, dtype_name)
                    if key not in copy_cache:
                        esize = torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
                        copy_cache[key] = copy_gbps(N * C * esize, torch, args.warmup, args.rep)
                        # the eager float32 loss of the same data: a sanity check of every impl
                        x0, t = make_data(N, C, getattr(torch, dtype_name), torch)
                        eager_cache[key] = float(eager_mom(x0.float(), t))
                        del x0, t
                    copy_bw = copy_cache[key]
                    print(f"N={N} C={C} {dtype_name}: copy {copy_bw:.0f} GB/s", flush=True)
                    for name in pass_names:
                        if name not in impls:
                            continue
                        fn, note = impls[name]
                        if fn is not None and time.time() - t_start > args.time_budget:
                            fn, note = None, "skipped: time budget"
                        if fn is None:
                            row = dict(N=N, C=C, dtype=dtype_name, impl=name, mode="-", note=note)
                            writer.writerow(row)
                            rows.append(row)
                            print(f"  {name}: {note}", flush=True)
                            continue
                        measure(name, fn, N, C, dtype_name, torch, args, copy_bw, writer, rows,
                                eager_cache[key] if name not in ("liger", "triton+ls") else None)
                        fcsv.flush()
    write_markdown(os.path.join(args.out, "gpu_bench.md"), [r for r in rows if r["mode"] != "-"]
                   + [r for r in rows if r["mode"] == "-"], env)
    print(f"wrote {csv_path} and gpu_bench.md in {time.time() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
