"""setup.py is the one list of sources, flags and CUDA targets: CMakeLists.txt
and .ci/run read it (`python setup.py --print-cmake`, `--print CI_CUDA_ARCHS`),
without torch."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(*args, **env):
    return subprocess.run([sys.executable, "setup.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_print_cmake_lists_every_source_and_needs_no_torch(tmp_path):
    # a `torch` that cannot be imported: the print modes must not need it
    (tmp_path / "torch.py").write_text("raise ImportError('no torch here')\n")
    r = _setup("--print-cmake", PYTHONPATH=str(tmp_path))
    assert r.returncode == 0, r.stderr
    sets = dict(re.findall(r'^set\((\w+) "(.*)"\)$', r.stdout, re.M))
    cpu = sets["MOMK_CPU_SOURCES"].split(";")
    isa = sets["MOMK_ISA_SOURCES"].split(";")
    # every C++ source of csrc/ (not the unit test, not CUDA) is built, once
    want = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "csrc", "**",
                                                                           "*.cpp"),
                                                              recursive=True)
                  if "/tests/" not in p and "/host_emulation/" not in p)
    assert sorted(cpu + isa) == want
    assert [sets[f"MOMK_ISA_FLAGS_{i}"].split(";")[0] for i in range(len(isa))] == [
        "-mavx2", "-mavx512f"]
    assert "-O3" in sets["MOMK_CXX_FLAGS"].split(";")
    r = _setup("--print", "CI_CUDA_ARCHS", PYTHONPATH=str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == sets["MOMK_CI_CUDA_ARCHS"]


def test_cuda_arch_lists_are_written_once():
    """No other build or CI file spells out an arch list: they read setup.py."""
    for rel in ("CMakeLists.txt", ".ci/run", "README.md", "docs/architecture.md", "docs/gpu.md"):
        with open(os.path.join(REPO, rel)) as f:
            text = f.read()
        assert not re.search(r"\b8\.0;\s*[0-9]", text), rel
