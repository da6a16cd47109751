"""The backends: one table that says what each one is, where it runs and how
``backend="auto"`` chooses.

    name     devices      logits dtypes           loss function                 code
    -------  -----------  ----------------------  ----------------------------  -----------------------
    triton   cuda (cpu*)  float16/bfloat16/32     momkernels.triton.mom_loss    momkernels/triton/
    cpp      cpu, cuda    + float64               momkernels.ops.mom_loss       csrc/
    torch    any          + float64               reference.mom_cross_entropy   momkernels/reference.py

    * CPU tensors only under the Triton interpreter, TRITON_INTERPRET=1

Every loss function takes ``(x, t, weight, options)``: logits ``(rows, C)``,
targets ``(rows,)`` (``rows.as_rows``), the optional class weights and a
validated ``options.LossOptions``; it returns the loss (0-dim, or ``(rows,)``
for ``reduction="none"``) and turns the options into its own arguments in one
place.  A backend whose kernels do not compute a dtype names the backends that
do (``hand_on``): the Triton kernels compute in float32, which docs/spec.md §4
does not allow for float64 logits, so ``"triton"`` hands float64 on to
``"cpp"``, or to ``"torch"`` where the extension is not built.

Importing this module imports neither triton nor the extension's kernels: the
triton row imports ``momkernels.triton`` when it is first asked about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from . import ops, reference
from .options import BACKEND_CHOICES, LossOptions
from .rows import check_target_range

__all__ = ["Backend", "BackendUnavailableError", "TABLE", "NAMES", "AUTO_ORDER", "get",
           "unavailable_reason", "available_backends", "auto_backend", "resolve", "compute"]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and how to get it."""


LossFn = Callable[[Tensor, Tensor, Optional[Tensor], LossOptions], Tensor]

_ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """One row of the table (see the module docstring)."""

    name: str
    # device types it has kernels for; None: every device torch runs on
    devices: Optional[tuple[str, ...]]
    # logits dtypes its kernels compute; the others go to `hand_on`
    dtypes: tuple[torch.dtype, ...]
    # None when it can run on the device, else why not and how to fix it
    unavailable_reason: Callable[[torch.device], Optional[str]]
    loss: LossFn
    # for logits of a dtype not in `dtypes`: the first of these available on the device
    hand_on: tuple[str, ...] = ()


# ------------------------------------------------------------------ the rows


def _triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on ``device``: triton importable and
    a CUDA tensor, or a CPU tensor under TRITON_INTERPRET=1 (momkernels/triton)."""
    from . import triton as triton_backend  # imports triton itself: only when asked

    return triton_backend.unavailable_reason(device)


def _triton_loss(x: Tensor, t: Tensor, weight: Optional[Tensor], opts: LossOptions) -> Tensor:
    from . import triton as triton_backend

    return triton_backend.mom_loss(x, t, weight, opts)


_CPP_DEVICES = ("cpu", "cuda")


def _cpp_unavailable_reason(device: torch.device) -> Optional[str]:
    err = ops.load_error()
    if err is not None:
        return err
    if device.type == "cuda" and not ops.has_cuda():
        return ("momkernels' extension was built without CUDA: reinstall with\n"
                "    FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation "
                "--force-reinstall --no-deps .")
    if device.type not in _CPP_DEVICES:
        return f"backend='cpp' has kernels for CPU and CUDA tensors, not {device.type}"
    return None


def _torch_unavailable_reason(device: torch.device) -> Optional[str]:
    return None


def _torch_loss(x: Tensor, t: Tensor, weight: Optional[Tensor], opts: LossOptions) -> Tensor:
    """The reference as a backend: ``opts`` as its keyword arguments."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        # docs/spec.md §8: on CPU an out-of-range target is an IndexError, as in
        # PyTorch (gather would raise a RuntimeError).  Reading CPU targets is no sync.
        check_target_range(t, x.shape[-1], opts.ignore_index)
    return reference.mom_cross_entropy(
        x, t, opts.lam, o_index=opts.o_index, ignore_index=opts.ignore_index, weight=weight,
        loss=opts.loss, gamma=opts.gamma, dice_alpha=opts.dice_alpha,
        dice_smooth=opts.dice_smooth, label_smoothing=opts.label_smoothing,
        reduction=opts.reduction, mom_norm=opts.mom_norm)


# The order of the rows is the order of available_backends().
TABLE: tuple[Backend, ...] = (
    Backend("triton", ("cuda", "cpu"), (torch.float16, torch.bfloat16, torch.float32),
            _triton_unavailable_reason, _triton_loss, hand_on=("cpp", "torch")),
    Backend("cpp", _CPP_DEVICES, _ALL_FLOATS, _cpp_unavailable_reason, ops.mom_loss),
    Backend("torch", None, _ALL_FLOATS, _torch_unavailable_reason, _torch_loss),
)
NAMES = tuple(b.name for b in TABLE)
assert BACKEND_CHOICES == ("auto",) + NAMES, "options.BACKEND_CHOICES and the table disagree"

# backend="auto": the first available backend of the device type's list, else "torch".
#
#   device  preference              why
#   ------  ----------------------  ---------------------------------------------
#   cpu     cpp, torch              the C++ kernels beat the reference at every
#                                   shape measured (docs/bench/README.md); Triton
#                                   on CPU is only the (slow) interpreter
#   cuda    cpp, triton, torch      cpp only when built with CUDA; NOT yet
#                                   measured against triton on a GPU (no GPU run
#                                   so far): revisit with bench/ numbers
#   other   torch
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cpu": ("cpp",), "cuda": ("cpp", "triton")}
AUTO_FALLBACK = "torch"


# ------------------------------------------------------------------ queries


def get(name: str) -> Backend:
    """The row of backend ``name`` ("triton", "cpp" or "torch")."""
    for b in TABLE:
        if b.name == name:
            return b
    raise KeyError(name)


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None when backend ``name`` can run on ``device``; otherwise why not and how to fix it."""
    return get(name).unavailable_reason(device)


def available_backends(device: Optional[torch.device | str] = None) -> list[str]:
    """Backends that can run on ``device`` (default: CPU, and CUDA when present).

    ``"torch"`` (the reference) is always available.  ``"triton"`` needs the
    ``triton`` package and a CUDA tensor, or a CPU tensor under
    ``TRITON_INTERPRET=1``; its kernels compute in float32, so float64 logits
    given to it are computed by ``"cpp"`` (``"torch"`` if not built) instead.
    """
    if device is None:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    else:
        devices = [torch.device(device)]
    return [b for b in NAMES if any(unavailable_reason(b, d) is None for d in devices)]


def auto_backend(device: torch.device) -> str:
    """The backend ``backend="auto"`` runs on ``device`` (see AUTO_ORDER)."""
    for b in AUTO_ORDER.get(device.type, ()):
        if unavailable_reason(b, device) is None:
            return b
    return AUTO_FALLBACK


def resolve(name: str, device: torch.device) -> Backend:
    """The row that runs a call with ``backend=name`` (a validated choice, "auto"
    included) on ``device``; BackendUnavailableError with the reason if it cannot."""
    if name == "auto":
        return get(auto_backend(device))
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailableError(reason)
    return get(name)


def compute(backend: Backend, x: Tensor, t: Tensor, weight: Optional[Tensor],
            opts: LossOptions) -> Tensor:
    """``backend``'s loss of rows ``x``, ``t``, or that of the backend it hands
    ``x``'s dtype on to (the first of ``hand_on`` available on the device)."""
    if x.dtype not in backend.dtypes:
        name = next(b for b in backend.hand_on if unavailable_reason(b, x.device) is None)
        backend = get(name)
    return backend.loss(x, t, weight, opts)
