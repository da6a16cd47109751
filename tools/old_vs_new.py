"""Two builds of momkernels side by side: old (a checkout of main) against new
(this branch), in alternating subprocesses, and old against itself for the noise.

    python tools/old_vs_new.py --old OLD_CHECKOUT --new NEW_CHECKOUT [--rounds 3] [--cases 256x32000,...] [--out FILE]

Each checkout must hold its in-place build (``setup.py build_ext --inplace``);
a worker subprocess runs with ``PYTHONPATH=<checkout>`` and checks that it
imported that checkout's momkernels.  Per round the workers run in the order
old, new, old (rotated every round, so no label always runs first); a worker
times every case (the median of repeated calls after a warm-up) and reports
its peak RSS.  The table gives the median over rounds per case and label,
new/old and old2/old (the second old worker of each round against the first:
the noise of the comparison on this machine).

Cases: ``mom_cross_entropy`` (lam 0.5, o_index 0) and ``cross_entropy``,
backend "cpp", forward under ``torch.no_grad()`` and forward + backward
(``loss.backward()``), float32 at N = 8192 with C = 9 .. 1024, N = 256 at
C = 32000, one bfloat16 row, and small-C grid rows.  One thread
(``torch.set_num_threads(1)``) unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [
    # (name, N, C, dtype)
    ("8192x9", 8192, 9, "float32"),
    ("8192x17", 8192, 17, "float32"),
    ("8192x64", 8192, 64, "float32"),
    ("8192x65", 8192, 65, "float32"),
    ("8192x128", 8192, 128, "float32"),
    ("8192x1024", 8192, 1024, "float32"),
    ("256x32000", 256, 32000, "float32"),
    ("8192x9 bf16", 8192, 9, "bfloat16"),
    ("512x5", 512, 5, "float32"),
    ("2048x9", 2048, 9, "float32"),
    ("2048x33", 2048, 33, "float32"),
]
FUNCS = ["mom", "ce"]
MODES = ["fwd", "fwd+bwd"]


def worker(threads: int, min_time: float, cases: list) -> None:
    import resource

    import torch

    import momkernels

    torch.set_num_threads(threads)
    out = {"momkernels": momkernels.__file__, "times": {}}
    for name, N, C, dt in CASES:
        if cases and name not in cases:
            continue
        g = torch.Generator().manual_seed(0)
        dtype = getattr(torch, dt)
        x0 = (torch.randn(N, C, generator=g) * 2).to(dtype)
        t = torch.randint(0, C, (N,), generator=g)
        t[torch.rand(N, generator=g) < 0.6] = 0  # NER-like: most rows the O class
        t[::10] = -100
        for fn in FUNCS:
            if fn == "mom":
                def loss(x):
                    return momkernels.mom_cross_entropy(x, t, 0.5, o_index=0, backend="cpp")
            else:
                def loss(x):
                    return momkernels.cross_entropy(x, t, backend="cpp")
            for mode in MODES:
                if mode == "fwd":
                    x = x0

                    def step():
                        with torch.no_grad():
                            loss(x)
                else:
                    x = x0.clone().requires_grad_(True)

                    def step():
                        loss(x).backward()
                        x.grad = None
                for _ in range(3):
                    step()
                samples = []
                t_end = time.perf_counter() + min_time
                while len(samples) < 5 or time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    step()
                    samples.append(time.perf_counter() - t0)
                out["times"][f"{name}|{fn}|{mode}"] = statistics.median(samples)
    out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


def run_worker(checkout: str, threads: int, min_time: float, cases: list) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
           "--min-time", str(min_time), "--cases", ",".join(cases)]
    res = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True, check=True)
    data = json.loads(res.stdout.strip().splitlines()[-1])
    want = os.path.join(os.path.realpath(checkout), "momkernels")
    got = os.path.dirname(os.path.realpath(data["momkernels"]))
    if got != want:
        raise SystemExit(f"worker for {checkout} imported {data['momkernels']}")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old")
    ap.add_argument("--new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--cases", default="",
                    help="comma-separated case names (e.g. 256x32000,8192x1024); default: all")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - {c[0] for c in CASES}
    if unknown:
        ap.error(f"--cases: unknown case(s) {sorted(unknown)}; known: {[c[0] for c in CASES]}")
    if a.worker:
        worker(a.threads, a.min_time, cases)
        return
    labels = {"old": a.old, "new": a.new, "old2": a.old}
    order = ["old", "new", "old2"]
    results = {k: [] for k in labels}
    for r in range(a.rounds):
        rot = order[r % 3:] + order[:r % 3]
        for lab in rot:
            print(f"round {r + 1}/{a.rounds}: {lab}", file=sys.stderr, flush=True)
            results[lab].append(run_worker(labels[lab], a.threads, a.min_time, cases))
    keys = list(results["old"][0]["times"])
    med = {lab: {k: statistics.median(d["times"][k] for d in results[lab]) for k in keys}
           for lab in labels}
    lines = ["| case | loss | pass | old ms | new ms | new/old | old2/old (noise) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for k in keys:
        name, fn, mode = k.split("|")
        o, n, o2 = med["old"][k], med["new"][k], med["old2"][k]
        lines.append(f"| {name} | {'mom_cross_entropy' if fn == 'mom' else 'cross_entropy'} | "
                     f"{mode} | {o * 1e3:.3f} | {n * 1e3:.3f} | {n / o:.3f} | {o2 / o:.3f} |")
    rss = {lab: statistics.median(d["maxrss_kb"] for d in results[lab]) / 1024 for lab in labels}
    lines.append("")
    lines.append(f"Peak RSS of a worker (median over rounds, whole process): old "
                 f"{rss['old']:.0f} MiB, new {rss['new']:.0f} MiB, old2 {rss['old2']:.0f} MiB.")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
