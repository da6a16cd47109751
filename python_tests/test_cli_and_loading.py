"""The command line (python -m momkernels info / check) and the behaviour when
the compiled extension cannot be loaded."""

import os
import subprocess
import sys

import pytest
import torch

import momkernels
from momkernels import functional, ops

# The subprocess must import the same momkernels as this process (the installed
# one in CI, the source tree with an in-place build in development): put its
# parent first on the path and run from a neutral directory.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(momkernels.__file__)))


def _run(*args, env=None):
    e = dict(os.environ)
    e.pop("TRITON_INTERPRET", None)
    e["PYTHONPATH"] = os.pathsep.join([PKG_PARENT] + [p for p in [e.get("PYTHONPATH")] if p])
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "momkernels", *args], capture_output=True,
                          text=True, env=e, timeout=600, cwd=os.path.abspath(os.sep))


def test_info_reports_versions_build_and_backends():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert f"momkernels      {momkernels.__version__}" in r.stdout
    assert f"torch           {torch.__version__}" in r.stdout
    assert "backends on cpu" in r.stdout and "auto  -> " in r.stdout
    if ops.is_available():
        assert "extension       loaded: cpu kernels" in r.stdout


@pytest.mark.skipif(not ops.is_available(), reason="needs the compiled extension")
@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_check_passes_with_the_other_cpu_kernels(isa):
    """The extension holds the kernels once per instruction set (kernel_impl.h
    compiled for DEFAULT / AVX2 / AVX-512) and picks one at run time with
    at::get_cpu_capability(); ATEN_CPU_CAPABILITY forces a lower one, so the
    paths this machine does not pick by itself are checked against the
    reference too (the AVX-512 ones run in every other test here)."""
    e = dict(os.environ, ATEN_CPU_CAPABILITY=isa, PYTHONPATH=PKG_PARENT)
    e.pop("TRITON_INTERPRET", None)
    code = "import momkernels.ops as o; print(o.build_info()['cpu_isa'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                       timeout=120, cwd=os.path.abspath(os.sep))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa.upper()
    r = _run("check", "--backend", "cpp", env={"ATEN_CPU_CAPABILITY": isa})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpp on cpu:" in r.stdout and ": OK" in r.stdout, r.stdout


@pytest.mark.skipif(not ops.is_available(), reason="needs the compiled extension")
def test_check_passes_for_cpp():
    r = _run("check", "--backend", "cpp")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpp on cpu: 576 cases" in r.stdout and ": OK" in r.stdout


def test_unloadable_extension_gives_a_clear_error(monkeypatch):
    # Simulate an extension built against another torch: the "cpp" backend is
    # unavailable, auto falls back to the reference, and asking for "cpp" says
    # why and how to rebuild instead of an undefined-symbol traceback.
    monkeypatch.setattr(ops, "_load_error",
                        "momkernels' C++ extension (momkernels._C) could not be loaded: "
                        "undefined symbol: _ZN3c10fake")
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert "cpp" not in momkernels.available_backends("cpu")
    assert functional._auto_backend(torch.device("cpu")) == "torch"
    with pytest.raises(momkernels.BackendUnavailableError,
                       match=r"(?s)undefined symbol.*--no-build-isolation"):
        momkernels.mom_cross_entropy(x, t, 0.5, backend="cpp")
    torch.testing.assert_close(momkernels.cross_entropy(x, t),
                               torch.nn.functional.cross_entropy(x, t))


# ------------------------------------------------------------- the torch we support

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_min_torch_is_declared_the_same_everywhere():
    """momkernels.MIN_TORCH (the import check, and setup.py's build check, which
    reads it) is what pyproject.toml declares and what CI's oldest environment installs."""
    import re

    need = ".".join(map(str, momkernels.MIN_TORCH))
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert re.search(r'^dependencies = \["torch>=([\d.]+)"\]', f.read(), re.M).group(1) == need
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert re.search(r"^OLDEST_TORCH=torch==([\d.]+)$", f.read(), re.M).group(1) == need + ".0"


@pytest.mark.parametrize("version,ok", [
    ("2.11.0+cu130", True), ("2.11.0", True), ("2.14.1+cpu", True), ("3.0.0", True),
    ("2.10.2", False), ("2.9.1", False), ("1.13.1", False), ("nonsense", False)])
def test_torch_version_check(version, ok):
    if ok:
        momkernels._check_torch_version(version)
    else:
        with pytest.raises(ImportError, match=rf"needs torch >= 2\.11, found torch {version}:"):
            momkernels._check_torch_version(version)


def test_import_with_an_unsupported_torch_says_so():
    code = "import torch; torch.__version__ = '2.10.0'; import momkernels"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=PKG_PARENT), timeout=120,
                       cwd=os.path.abspath(os.sep))
    assert r.returncode == 1
    assert "ImportError: momkernels needs torch >= 2.11, found torch 2.10.0" in r.stderr, r.stderr


def test_build_with_an_unsupported_torch_says_so():
    code = ("import runpy, sys, torch; torch.__version__ = '2.10.0'; "
            "sys.argv = ['setup.py', '--version']; runpy.run_path('setup.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode == 1
    assert "momkernels needs torch >= 2.11 to build, found torch 2.10.0" in r.stderr, r.stderr
