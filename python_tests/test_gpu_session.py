"""bench/gpu_session.sh fits the GPU machine (at most 8 output files, under 6
minutes) and, run where there is no usable GPU, stops at once with a clear
message instead of building and testing for minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                      "gpu_session.sh")


def _run(*args, **env):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_run_lists_steps_budgets_and_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    r = _run("--dry-run", str(out))
    assert r.returncode == 0, r.stderr
    budgets = [int(b) for b in re.findall(r"^  \S+\s+(\d+)s  ", r.stdout, re.M)]
    assert len(budgets) == 5 and sum(budgets) < 360, r.stdout
    cap = int(re.search(r"capped at (\d+)s", r.stdout).group(1))
    assert cap < 360
    files = re.search(r"output files \((\d+), in .*\): (.*)", r.stdout)
    assert int(files.group(1)) == len(files.group(2).split()) <= 8
    assert not out.exists(), "a dry run writes nothing"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_gpu_fails_fast_with_a_clear_message(tmp_path):
    t0 = time.monotonic()
    r = _run(str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert r.returncode == 2
    assert "no usable CUDA GPU" in r.stderr and "torch.cuda.is_available() is False" in r.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()
