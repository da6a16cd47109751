"""The command line (python -m momkernels info / check) and the behaviour when
the compiled extension cannot be loaded."""

import os
import subprocess
import sys

import pytest
import torch

import momkernels
from momkernels import backends, ops

# The subprocess must import the same momkernels as this process (the checkout
# with its in-place build in .venv's editable install, the installed one in CI's
# .venv-oldest): put its parent first on the path and run from a neutral directory.
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
    assert "cpp on cpu: 720 cases" in r.stdout and ": OK" in r.stdout


def test_unloadable_extension_gives_a_clear_error(monkeypatch):
    # Simulate an extension built against another torch: the "cpp" backend is
    # unavailable, auto falls back to the reference, and asking for "cpp" says
    # why and how to rebuild instead of an undefined-symbol traceback.
    monkeypatch.setattr(ops, "_load_error",
                        "momkernels' C++ extension (momkernels._C) could not be loaded: "
                        "undefined symbol: _ZN3c10fake")
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert "cpp" not in momkernels.available_backends("cpu")
    assert backends.auto_backend(torch.device("cpu")) == "torch"
    with pytest.raises(momkernels.BackendUnavailableError,
                       match=r"(?s)undefined symbol.*--no-build-isolation"):
        momkernels.mom_cross_entropy(x, t, 0.5, backend="cpp")
    torch.testing.assert_close(momkernels.cross_entropy(x, t),
                               torch.nn.functional.cross_entropy(x, t))


# ------------------------------------------------------------- the package's imports


def _package_imports() -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported module, name or "")}} for every momkernels module,
    imports inside functions included (a lazy import is still a dependency)."""
    import ast

    pkg_dir = os.path.dirname(os.path.abspath(momkernels.__file__))
    modules = {}
    for dirpath, _, files in os.walk(pkg_dir):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), PKG_PARENT)[:-3]
                name = rel.replace(os.sep, ".").removesuffix(".__init__")
                modules[name] = os.path.join(dirpath, f)
    deps = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add((sub, "") if sub in modules else (base, alias.name))
            elif isinstance(node, ast.Import):
                edges.update((alias.name, "") for alias in node.names)
        deps[name] = {(m, n) for m, n in edges if m in modules}
    return deps


def test_no_import_cycle_and_no_private_names_across_modules():
    """docs/architecture.md's layering: rows / options are leaves, reference
    imports rows, backends imports the backends' code, functional imports
    backends, and nothing imports back up (the root package, which only
    re-exports the public names, is left out).  No module reaches into
    another's private names."""
    deps = _package_imports()
    private = sorted(f"{m} imports {n} from {d}" for m, edges in deps.items()
                     for d, n in edges
                     if n.startswith("_") and not n.startswith("__") and n != "_C")
    assert not private, private
    graph = {m: {d for d, _ in edges if d not in ("momkernels", m)} for m, edges in deps.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert {"momkernels.rows", "momkernels.options"} <= set(graph)
    assert not graph["momkernels.rows"] and not graph["momkernels.options"]
    assert graph["momkernels.reference"] == {"momkernels.rows"}


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


# ------------------------------------------------------------- the README's main command


def test_readme_bench_command_from_the_repo_root():
    """`.venv/bin/python -m momkernels bench`, run from the repository root as the
    README says, imports the checkout's ./momkernels: it must measure the compiled
    kernels (tools/bootstrap.sh builds them in place), write to the untracked
    runs/bench, and keep the profiler's log lines out of the terminal.  Shortened
    with --quick and one small shape; --tag keeps a user's own runs/bench files."""
    import csv

    tag = "test_readme_bench_command"
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "TRITON_INTERPRET", "KINETO_LOG_LEVEL")}
    r = subprocess.run([sys.executable, "-m", "momkernels", "bench", "--quick", "--shapes", "512x9",
                        "--no-compile", "--tag", tag], capture_output=True, text=True, env=e,
                       timeout=600, cwd=REPO)
    out = os.path.join(REPO, "runs", "bench")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "USDT" not in r.stdout + r.stderr and "profiler_start" not in r.stderr, r.stderr
        assert f"wrote {os.path.join('runs', 'bench', tag)}.csv" in r.stdout, r.stdout
        with open(os.path.join(out, f"{tag}.csv")) as f:
            measured = {(row["competitor"], row["mode"]) for row in csv.DictReader(f)}
        assert {("cpp", m) for m in ("fwd", "bwd", "fwd+bwd")} <= measured, measured
        from momkernels.benchmark import cpu_model, eager_isa_to_add

        with open(os.path.join(out, f"{tag}.csv")) as f:
            assert {row["cpu"] for row in csv.DictReader(f)} == {cpu_model()}
        with open(os.path.join(out, f"{tag}.md")) as f:
            md = f.read()
        assert f"- machine: {cpu_model()}," in md
        if eager_isa_to_add("cpu") is None:
            assert "| eager | cpp | torch |" in md
        else:  # eager at its best ISA: also timed under ATEN_CPU_CAPABILITY=avx2
            assert "| eager | eager[avx2] | cpp | torch |" in md
            assert ("eager", "fwd+bwd") in measured and ("eager[avx2]", "fwd+bwd") in measured
    finally:  # what it wrote ("wrote A and B", "wrote C"), wherever that was
        for line in r.stdout.splitlines():
            for path in line[len("wrote "):].split(" and ") if line.startswith("wrote ") else ():
                if path.endswith(tag + os.path.splitext(path)[1]):
                    os.remove(os.path.join(REPO, path))


def test_bench_exits_nonzero_when_a_backend_cannot_load(monkeypatch, capsys):
    from momkernels import __main__ as cli, benchmark

    monkeypatch.setattr(ops, "_load_error",
                        "momkernels' C++ extension (momkernels._C) could not be loaded: "
                        "No module named 'momkernels._C'")
    monkeypatch.setattr(benchmark, "run", lambda *a, **k: pytest.fail("measured without cpp"))
    assert cli.main(["bench", "--device", "cpu", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "cannot measure backend 'cpp' on cpu" in err and "No module named" in err, err
    assert cli.main(["bench", "--device", "cpu", "--backends", "cpp", "torch"]) == 2
    # asking only for what loads measures it
    assert benchmark._unloadable_backends("cpu", ["torch"]) == {}
