"""Shared pieces of the momkernels test suite: backends under test, input
builders (logits in several memory layouts, NER-like targets) and the
comparison with the float64 oracle; and the NER example's modules
(``ner_example``) for the example tests.

The tolerances and the comparison itself (``value_tol``, ``grad_tol``,
``oracle_floor``, ``coefficient_scale``, ``assert_close``, ``oracle``) are
``momkernels.testing``'s, the one definition of "correct within tolerance"
that ``python -m momkernels check`` uses too; its docstring explains every
value.  They are re-exported here so that tests import them from one place.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

import momkernels
from momkernels.testing import (  # noqa: F401 -- re-exported for the tests
    assert_bitwise_equal,
    assert_close,
    backend_factor,
    coefficient_scale,
    eps_of,
    grad_tol,
    oracle,
    oracle_floor,
    value_tol,
)

# --------------------------------------------------------------- backends

# Backends that can run on CPU tensors here (a backend with only GPU kernels
# is left out; "triton" joins under TRITON_INTERPRET=1, which conftest.py sets
# when there is no GPU).  MOMKERNELS_TEST_BACKENDS=cpp,torch picks a subset.
_CPU_BACKENDS = [b for b in momkernels.available_backends("cpu")
                 if b in ("cpp", "torch", "triton")]
_REQUESTED = os.environ.get("MOMKERNELS_TEST_BACKENDS", "")
if _REQUESTED.strip():
    _wanted = [b.strip() for b in _REQUESTED.split(",") if b.strip()]
    _missing = [b for b in _wanted if b not in _CPU_BACKENDS]
    if _missing:
        raise RuntimeError(f"MOMKERNELS_TEST_BACKENDS asks for {_missing}, not available on "
                           f"CPU here (available: {_CPU_BACKENDS})")
    BACKENDS = _wanted
else:
    BACKENDS = _CPU_BACKENDS
HAS_CPP = "cpp" in BACKENDS
# For the grids parametrised by device (conftest.py's ``device``): the CPU
# backends and, on a GPU machine, the CUDA ones (conftest.py skips a pair that
# cannot run).  Without a GPU this is BACKENDS.
if torch.cuda.is_available():
    _CUDA_BACKENDS = [b for b in momkernels.available_backends("cuda")
                      if b in ("cpp", "torch", "triton")
                      and (not _REQUESTED.strip() or b in _wanted)]
    ALL_BACKENDS = BACKENDS + [b for b in _CUDA_BACKENDS if b not in BACKENDS]
else:
    ALL_BACKENDS = list(BACKENDS)
# Backends that run interpreted here (Triton's interpreter: ~100x slower).
INTERPRETED = {"triton"} if os.environ.get("TRITON_INTERPRET") == "1" else set()


# Backends with fused kernels.  "torch" is PyTorch autograd of log_softmax
# (for cross-entropy; focal and dice take log p_y = -log1p(r) where p_y -> 1),
# which forms p_y - 1 by subtraction exactly as F.cross_entropy does; accuracy
# beyond PyTorch's own (confident rows) is the fused kernels' promise only.
FUSED = [b for b in BACKENDS if b != "torch"]
FUSED_ALL_DEVICES = [b for b in ALL_BACKENDS if b != "torch"]  # with conftest.py's ``device``


def backend_params(heavy: bool = False, devices: bool = False) -> list:
    """BACKENDS for ``parametrize`` (``devices``: ALL_BACKENDS, for the tests
    that also take conftest.py's ``device``); in the big grids (``heavy``) an
    interpreted backend is marked ``slow`` so the default run stays within
    minutes."""
    return [pytest.param(b, marks=pytest.mark.slow) if heavy and b in INTERPRETED else b
            for b in (ALL_BACKENDS if devices else BACKENDS)]


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LOW_PRECISION = (torch.float16, torch.bfloat16)

# --------------------------------------------------------------- inputs


def make_logits(shape, dtype, *, gen: torch.Generator, scale: float = 3.0,
                layout: str = "contig", device="cpu") -> torch.Tensor:
    """Logits of ``shape`` (as F.cross_entropy's input) in a memory layout:

    2-D ``(N, C)``: contig | transposed ((C, N) storage) | colslice (every
    other column of (N, 2C)) | rowslice (every other row of (2N, C)) | expand
    (one row broadcast to N rows, stride 0) | offset (contiguous, at a storage
    offset of one element: rows not 16-byte aligned);
    1-D ``(C,)``: contig | colslice (every other element);
    N-D ``(N, C, d...)``: contig | transposed (classes last in memory) |
    colslice (every other class) | rowslice (every other sample).
    The values are rounded to ``dtype`` once (drawn on the CPU: the same values
    on every ``device``, where the storage, then the view, is made); the
    returned tensor is a leaf that requires grad.
    """
    shape = tuple(shape)

    def rnd(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    nd = len(shape)
    if layout == "contig" or (nd == 1 and layout not in ("colslice",)):
        base = rnd(*shape)
        x = base
    elif layout == "colslice":
        cdim = 0 if nd == 1 else 1
        big = list(shape)
        big[cdim] *= 2
        base = rnd(*big)
        x = base[(slice(None),) * cdim + (slice(None, None, 2),)]
    elif layout == "transposed":
        if nd == 2:
            base = rnd(shape[1], shape[0])
            x = base.t()
        else:  # (N, d..., C) storage, viewed as (N, C, d...)
            perm_shape = (shape[0],) + shape[2:] + (shape[1],)
            base = rnd(*perm_shape)
            x = base.movedim(-1, 1)
    elif layout == "rowslice":
        base = rnd(2 * shape[0], *shape[1:])
        x = base[::2]
    elif layout == "offset":  # a storage offset of one element: rows not 16-byte aligned
        base = rnd(math.prod(shape) + 1)
        x = base[1:].view(shape)
    elif layout == "expand":
        if nd == 2:
            base = rnd(1, shape[1])
            x = base.expand(shape[0], shape[1])
        else:  # broadcast the sample dim
            base = rnd(1, *shape[1:])
            x = base.expand(*shape)
    else:
        raise ValueError(layout)
    assert tuple(x.shape) == shape, (x.shape, shape)
    # a leaf with the requested strides: detach() keeps the view's strides
    return x.detach().requires_grad_(True)


def make_targets(tshape, C: int, *, gen: torch.Generator, kind: str = "random",
                 o_index: int = 0, ignore_index: int = -100, ignore_frac: float = 0.3,
                 dtype: torch.dtype = torch.int64, strided: bool = False,
                 device="cpu") -> torch.Tensor:
    """Class-index targets: ``random`` (uniform over classes, ``ignore_frac`` of
    them ``ignore_index``), ``ner`` (80 % ``o_index``, 10 % ignored, the rest
    uniform) or ``none_ignored``.  ``strided``: a non-contiguous view (every other element of a
    larger tensor)."""
    tshape = tuple(tshape)
    n = math.prod(tshape)
    cls = torch.randint(0, C, (n,), generator=gen)
    # exact fractions at random positions: u is a random permutation of
    # (0.5 + k) / n, so "u < f" selects round(f * n) rows
    u = (torch.randperm(n, generator=gen).to(torch.float64) + 0.5) / max(n, 1)
    if kind == "random":
        t = torch.where(u < ignore_frac, torch.full_like(cls, ignore_index), cls)
    elif kind == "ner":
        t = torch.where(u < 0.8, torch.full_like(cls, o_index), cls)
        t = torch.where((u >= 0.8) & (u < 0.9), torch.full_like(cls, ignore_index), t)
    elif kind == "none_ignored":
        t = cls
    else:
        raise ValueError(kind)
    t = t.to(dtype).reshape(tshape).to(device)
    if strided:
        big = torch.stack([t, torch.full_like(t, 12345)], dim=-1)  # garbage in between
        t = big[..., 0]
        assert not t.is_contiguous() or t.numel() <= 1
    return t


def make_weight(C: int, dtype: torch.dtype, *, gen: torch.Generator,
                device="cpu") -> torch.Tensor:
    """Random positive class weights in [0.25, 2.25), rounded to ``dtype``."""
    return (torch.rand(C, generator=gen, dtype=torch.float64) * 2 + 0.25).to(dtype).to(device)


def target_shape(input_shape) -> tuple[int, ...]:
    input_shape = tuple(input_shape)
    if len(input_shape) == 1:
        return ()
    return (input_shape[0],) + input_shape[2:]


def num_classes(input_shape) -> int:
    input_shape = tuple(input_shape)
    return input_shape[0] if len(input_shape) == 1 else input_shape[1]


# --------------------------------------------------------------- oracle


def run_backend(x: torch.Tensor, t: torch.Tensor, upstream: Optional[torch.Tensor] = None, **kw):
    """(loss, grad) of momkernels.mom_cross_entropy on ``x`` (a leaf)."""
    lam = kw.pop("lam", 0.5)
    out = momkernels.mom_cross_entropy(x, t, lam, **kw)
    g = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


def check_against_oracle(x, t, *, upstream=None, backend, name="", **kw):
    """Values and gradients of ``backend`` against the float64 oracle."""
    out, grad = run_backend(x, t, upstream, backend=backend, **dict(kw))
    ref_out, ref_grad = oracle(x, t, upstream, **dict(kw))
    assert out.dtype == x.dtype, f"loss dtype {out.dtype} != input dtype {x.dtype}"
    assert grad.dtype == x.dtype and grad.shape == x.shape, (grad.dtype, grad.shape)
    k = backend_factor(backend, x.dtype)
    rtol, atol = value_tol(x.dtype)
    assert_close(out, ref_out, rtol=rtol * k, atol=atol * k, name=f"{name} loss")
    finite = ref_grad[ref_grad.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    grtol, gatol = grad_tol(x.dtype, scale)
    gatol += oracle_floor(x.dtype, coefficient_scale(t, upstream=upstream, **kw))
    assert_close(grad, ref_grad, rtol=grtol * k, atol=gatol * k, name=f"{name} grad")
    return out, grad


# ---------------------------------------------------------------- the NER example

NER_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ner"
WNUT17 = NER_EXAMPLE / "data" / "wnut17"


def ner_example(name: str):
    """The example's module ``name`` (examples/ner/<name>.py), imported as the
    example's files import each other: by name, from their folder."""
    if str(NER_EXAMPLE) not in sys.path:
        sys.path.insert(0, str(NER_EXAMPLE))
    mod = importlib.import_module(name)
    assert Path(mod.__file__).resolve().parent == NER_EXAMPLE, mod.__file__  # not another "data"
    return mod
