"""The benchmark harness (momkernels/benchmark.py) and its thin GPU command
line (bench/gpu_bench.py): speed-ups over the faster eager, the CPU model in
every result, and gpu_bench's mapping onto the harness (smoke-tested on CPU)."""

from __future__ import annotations

import csv
import importlib.util
import os

import pytest
import torch

import momkernels
from momkernels import benchmark as B

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_bench():
    spec = importlib.util.spec_from_file_location(
        "gpu_bench", os.path.join(REPO, "bench", "gpu_bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(comp, mode, ms, C=9):
    return B.Row("cpu", "fp32", 64, C, "ce", 0.175, comp, mode, ms, ms, ms)


def test_speedup_is_over_the_faster_eager():
    rows = [_row("eager", "fwd+bwd", 2.0), _row(B.EAGER_AVX2, "fwd+bwd", 1.0),
            _row("cpp", "fwd+bwd", 0.25), _row("cpp", "fwd", 0.5), _row("eager", "fwd", 1.0),
            _row("cpp", "fwd+bwd", 0.5, C=37)]
    B.set_speedups(rows)
    assert [r.speedup_vs_eager for r in rows[:5]] == [0.5, 1.0, 4.0, 2.0, 1.0]
    assert rows[5].speedup_vs_eager != rows[5].speedup_vs_eager  # no eager of that case: nan


def test_eager_isa_only_where_the_default_is_above_avx2(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    want = "avx2" if B.platform.machine().lower() in ("x86_64", "amd64") else None
    assert B.eager_isa_to_add("cpu") == want
    assert B.eager_isa_to_add("cuda") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert B.eager_isa_to_add("cpu") is None


def test_gpu_bench_maps_onto_the_harness():
    gb = _gpu_bench()
    argv = gb.harness_argv(gb.parse_args(["--out", "o", "--quick", "--time-budget", "35"]))
    assert argv[argv.index("--tag") + 1] == "gpu_bench" and "--no-plot" in argv
    shapes = argv[argv.index("--shapes") + 1:argv.index("--gpu-warmup-ms")]
    assert shapes == ["8192x9", "8192x37", "16384x32000"]  # --quick: C <= 32000
    assert argv[argv.index("--gpu-rep-ms") + 1] == "20"
    assert argv[argv.index("--dtypes") + 1:argv.index("--lams")] == ["bf16", "fp32"]
    assert argv[argv.index("--time-budget") + 1] == "35.0"


def test_gpu_bench_smoke_on_cpu(tmp_path, capsys):
    """`bench/gpu_bench.py --device cpu`: the harness end to end on tiny shapes
    (cpp and eager only: no torch.compile here), the two files the GPU session
    brings back, both naming the CPU."""
    gb = _gpu_bench()
    if "cpp" not in momkernels.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    rc = gb.main(["--device", "cpu", "--impls", "cpp,eager", "--shapes", "64x9",
                  "--dtypes", "float32", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == ["gpu_bench.csv", "gpu_bench.md"]
    with open(tmp_path / "gpu_bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["competitor"], r["mode"]) for r in rows} == {
        (c, m) for c in ("eager", "cpp") for m in ("fwd", "bwd", "fwd+bwd")}
    assert {r["cpu"] for r in rows} == {B.cpu_model()}
    assert all(float(r["abs_diff_vs_eager"]) < 1e-5 for r in rows)
    md = (tmp_path / "gpu_bench.md").read_text()
    assert f"- machine: {B.cpu_model()}," in md
