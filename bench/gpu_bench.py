"""GPU benchmark of the MoM loss, as bench/gpu_session.sh runs it: a thin
command line over the one benchmark harness, momkernels/benchmark.py
(``python -m momkernels bench``), with the GPU session's defaults:

    python bench/gpu_bench.py --out OUT_DIR [--quick] [--time-budget SECONDS]

is

    python -m momkernels bench --device cuda --shapes 8192x9 8192x37 16384x32000 16384x128256 \\
        --dtypes bf16 fp32 --lams 0.175 --competitors cpp triton triton+ls eager compile liger \\
        --time-budget 150 --gpu-warmup-ms 10 --gpu-rep-ms 50 --no-plot \\
        --out OUT_DIR --tag gpu_bench

Writes OUT_DIR/gpu_bench.csv (rewritten after every case, so a run cut short
keeps what it measured) and OUT_DIR/gpu_bench.md (the harness's tables under
its machine header: CPU model, GPU, versions, command).  Times are
triton.testing.do_bench medians (ms) with the 25th/75th percentiles; the
bandwidth column is the 3 passes over the logits of one fwd+bwd against a
measured device-to-device copy of the same bytes; peak extra memory and
|loss - eager's float32 loss| as in the harness (docs/bench/README.md,
"Columns").

The loss is the MoM loss, lam = 0.175, o_index = 0, ~10 % ignored rows (-100),
mean reduction; eager PyTorch is F.cross_entropy(reduction="none") + mask +
sums.  Liger-Kernel computes plain cross-entropy only, so the harness measures
it on lam = 1 cases (add --lams 1 0.175); it writes the gradient into the
logits during the forward: compare its fwd+bwd.
"""

from __future__ import annotations

import argparse
import os
import sys

SHAPES = ["8192x9", "8192x37", "16384x32000", "16384x128256"]
DTYPES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
IMPLS = "cpp,triton,triton+ls,eager,compile,liger"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmark of momkernels' MoM loss "
                                 "(see the module docstring)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_out",
                    help="output folder (default: $OUT or ./gpu_out)")
    ap.add_argument("--quick", action="store_true",
                    help="C <= 32000 only, shorter do_bench repetitions")
    ap.add_argument("--time-budget", type=float, default=150.0,
                    help="start no measurement after this many seconds (default 150)")
    ap.add_argument("--impls", default=IMPLS,
                    help=f"comma-separated subset of {IMPLS} (triton+ls: label smoothing 0.1, "
                         "the row-regime forward with the most registers)")
    ap.add_argument("--shapes", default=None, help="e.g. 8192x9,16384x32000 (default: all)")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--lams", default="0.175", help="comma-separated (liger needs 1)")
    ap.add_argument("--warmup", type=int, default=10, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time, ms")
    ap.add_argument("--device", default="cuda",
                    help="'cuda' (default); 'cpu' only smoke-tests this script (tiny shapes, "
                         "the harness's CPU timing)")
    return ap.parse_args(argv)


def harness_argv(args) -> list[str]:
    """The ``python -m momkernels bench`` arguments of this run."""
    shapes = args.shapes.split(",") if args.shapes else list(SHAPES)
    rep = args.rep
    if args.quick:
        shapes = [s for s in shapes if int(s.split("x")[1]) <= 32000]
        rep = min(rep, 20)
    argv = ["--device", args.device, "--dtypes", *[DTYPES[d] for d in args.dtypes.split(",") if d],
            "--lams", *args.lams.split(","), "--competitors",
            *[s.strip() for s in args.impls.split(",") if s.strip()],
            "--time-budget", str(args.time_budget), "--no-plot", "--out", args.out,
            "--tag", "gpu_bench"]
    if args.device == "cuda":
        argv += ["--shapes", *shapes, "--gpu-warmup-ms", str(args.warmup),
                 "--gpu-rep-ms", str(rep)]
    else:  # a smoke test of the script: tiny shapes, few repetitions, no eager[avx2]
        argv += ["--shapes", *(shapes if args.shapes else ["256x9", "16x3000"]), "--quick",
                 "--no-eager-isa"]
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure (--device cpu smoke-tests the "
              "script)", file=sys.stderr)
        return 2
    import momkernels
    from momkernels.benchmark import EXTRA_BACKEND_COMPETITORS
    from momkernels.benchmark import main as bench_main

    # measure what loads (a GPU session must bring back numbers even if, say,
    # triton is missing): a backend that cannot run is named and left out
    avail = momkernels.available_backends(args.device)
    impls = []
    for name in (s.strip() for s in args.impls.split(",") if s.strip()):
        backend = EXTRA_BACKEND_COMPETITORS.get(name, (name,))[0]
        if backend in ("cpp", "triton", "torch") and backend not in avail:
            print(f"gpu_bench: {name}: backend {backend!r} unavailable on {args.device}; "
                  "not measured", flush=True)
            continue
        impls.append(name)
    args.impls = ",".join(impls)
    hargs = harness_argv(args)
    print("python -m momkernels bench " + " ".join(hargs), flush=True)
    return bench_main(hargs)


if __name__ == "__main__":
    sys.exit(main())
