"""The Triton kernels as torch operators: ``torch.ops.momkernels.triton_mom_loss_*``.

Path of one call: ``momkernels.triton.mom_loss`` -> ``triton_mom_loss_fwd``
(a ``torch.library.triton_op``: allocation + ``wrap_triton`` launches of
``mom_fwd_kernel`` and ``mom_reduce_kernel``) -> autograd (``register_autograd``)
-> ``triton_mom_loss_bwd`` (``mom_bwd_kernel``), or ``triton_mom_loss_bwd_inplace``
when the in-place backward was asked for.

``triton_op`` + ``wrap_triton`` (not an opaque ``custom_op``) let
``torch.compile(fullgraph=True)`` see and schedule the Triton kernels, and
give the operators a fake (meta) implementation for free: the same Python
function, traced with fake tensors.  The ops mirror the C++ operators'
schemas (``momkernels::mom_loss_fwd/bwd``): the forward returns
(loss, stats (N, 2) = per-row (max, log-normaliser), coef (2,) = the
reduction coefficients (a, b), row i's coefficient being a + b [y_i == o_index]),
all three computed on the device, with the shapes and meaning of the C++
operators' outputs (float32, the math dtype of every logits dtype here).

Inputs are float16 / bfloat16 / float32 logits (N, C) with any strides,
int32 / int64 targets (N,) with any stride; the math is float32.  float64
logits are not handled here: the backend table (momkernels/backends.py) hands
them on to another backend.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import triton
from torch import Tensor
from torch.library import triton_op
from torch.types import Number

from ..options import LossOptions
from . import kernels as K
# The kernels by plain name, launched as ``wrap_triton(mom_fwd_kernel)``: the
# only form in which torch finds a triton_op's kernels (torch/_library/triton.py,
# get_inner_triton_kernels) to put their source into the torch.compile cache
# key -- with ``K.mom_fwd_kernel`` an edited kernel could reuse stale code.
from .kernels import mom_bwd_kernel, mom_fwd_kernel, mom_reduce_kernel

if K.INTERPRET:
    def wrap_triton(kernel):
        """Under the interpreter the ops are opaque custom ops (see ``_operator``)
        and launch the ``InterpretedFunction`` kernels directly: torch 2.11's
        ``wrap_triton`` rejects them (later versions return them unwrapped)."""
        return kernel
else:
    from torch.library import wrap_triton

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_inputs(input: Tensor, target: Tensor, weight: Optional[Tensor]) -> None:
    torch._check(input.dim() == 2, lambda: f"momkernels: input must be (N, C); got {input.shape}")
    torch._check(input.dtype in SUPPORTED_DTYPES,
                 lambda: "momkernels: the Triton kernels take float16, bfloat16 or float32 "
                         f"logits; got {input.dtype} (float64 goes to backend 'cpp' or 'torch')")
    torch._check(input.shape[1] >= 1, lambda: "momkernels: input needs C >= 1 classes")
    torch._check(target.dim() == 1 and target.shape[0] == input.shape[0],
                 lambda: f"momkernels: target must be (N,) = ({input.shape[0]},); "
                         f"got {tuple(target.shape)}")
    torch._check(target.dtype in (torch.int32, torch.int64),
                 lambda: f"momkernels: target must be int64 or int32; got {target.dtype}")
    if weight is not None:
        torch._check(weight.dim() == 1 and weight.shape[0] == input.shape[1],
                     lambda: f"momkernels: weight must have shape (C,); got {tuple(weight.shape)}")


def _check_backward(grad: Tensor, input: Tensor, stats: Tensor, coef: Tensor) -> None:
    N = input.shape[0]
    torch._check(grad.dim() == 0 or (grad.dim() == 1 and grad.shape[0] == N),
                 lambda: f"momkernels: grad must be 0-dim or (N,); got {tuple(grad.shape)}")
    torch._check(stats.dtype == torch.float32 and stats.shape == (N, 2) and stats.is_contiguous(),
                 lambda: "momkernels: stats must be the forward's contiguous float32 (N, 2)")
    torch._check(coef.dtype == torch.float32 and coef.shape == (2,),
                 lambda: "momkernels: coef must be the forward's float32 (2,)")


def _class_weights(weight: Optional[Tensor]) -> Optional[Tensor]:
    """Weights as contiguous float32 (no copy when they already are)."""
    return None if weight is None else weight.to(torch.float32).contiguous()


def _on_device(fn):
    """``fn`` run with the current CUDA device set to its first argument's.
    Triton launches on the current device, not on the tensors' one (logits on
    cuda:1 while cuda:0 is current, as under Hugging Face's device_map="auto")."""
    @functools.wraps(fn)  # torch reads the schema and the kernels from fn itself
    def run(first: Tensor, *args, **kwargs):
        with torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext():
            return fn(first, *args, **kwargs)

    return run


def _operator(name: str, *, mutates_args: tuple[str, ...], fake):
    """Define the operator ``name`` from the decorated function.

    Normally a ``triton_op``: its fake kernel is the function itself, traced
    with fake tensors, and ``torch.compile`` sees the ``wrap_triton`` launches.
    Under ``TRITON_INTERPRET=1`` that cannot work: ``@triton.jit`` then makes
    ``InterpretedFunction`` objects, which ``torch.library.wrap_triton``
    returns unwrapped (torch/_library/triton.py), so tracing would run the
    interpreter on FakeTensors ("Cannot access data pointer of Tensor").  The
    interpreter build therefore registers an opaque ``custom_op`` with an
    explicit shape-only ``fake`` -- same schema, same autograd, same kernels --
    so ``opcheck`` and ``torch.compile(fullgraph=True)`` still run on CPU.
    """
    def define(fn):
        fn = _on_device(fn)
        if K.INTERPRET:
            op = torch.library.custom_op(name, fn, mutates_args=mutates_args)
            op.register_fake(fake)
            return op
        return triton_op(name, fn, mutates_args=mutates_args)

    return define


def _fwd_fake(input, target, weight, lam, o_index, ignore_index, loss, gamma, dice_alpha,
              dice_smooth, label_smoothing, reduction, mom_norm, mom_denom, inplace_backward):
    _check_inputs(input, target, weight)
    N = input.shape[0]
    out = input.new_empty((N,) if reduction == "none" else ())
    return (out, input.new_empty((N, 2), dtype=torch.float32),
            input.new_empty((2,), dtype=torch.float32))


def _bwd_fake(grad, input, target, weight, stats, coef, o_index, ignore_index, loss, gamma,
              dice_alpha, dice_smooth, label_smoothing):
    _check_inputs(input, target, weight)
    _check_backward(grad, input, stats, coef)
    return torch.empty(input.shape, dtype=input.dtype, device=input.device)


def _bwd_inplace_fake(grad, input, target, weight, stats, coef, o_index, ignore_index, loss, gamma,
                      dice_alpha, dice_smooth, label_smoothing):
    _check_inputs(input, target, weight)
    _check_backward(grad, input, stats, coef)


@_operator("momkernels::triton_mom_loss_fwd", mutates_args=(), fake=_fwd_fake)
def triton_mom_loss_fwd(
    input: Tensor, target: Tensor, weight: Optional[Tensor], lam: float, o_index: int,
    ignore_index: int, loss: str, gamma: float, dice_alpha: float, dice_smooth: float,
    label_smoothing: float, reduction: str, mom_norm: str, mom_denom: Number,
    inplace_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward: (loss, stats, coef). ``mom_norm`` is "valid", "rows" or "fixed"
    (D_MoM = ``mom_denom``, a Scalar so that a SymInt stays symbolic under
    torch.compile); ``inplace_backward`` only matters to autograd."""
    _check_inputs(input, target, weight)
    N, C = input.shape
    block_n, block_c, warps = K.launch_config(C)
    num_programs = triton.cdiv(N, block_n)
    none = reduction == "none"
    out = input.new_empty((N,) if none else ())
    stats = input.new_empty((N, 2), dtype=torch.float32)
    coef = input.new_empty((2,), dtype=torch.float32)  # (a, b): mom_reduce_kernel writes it
    partials = input.new_empty((num_programs, 3), dtype=torch.float64)
    w32 = _class_weights(weight)
    if N > 0:
        wrap_triton(mom_fwd_kernel)[(num_programs,)](
            input, target, w32, out, stats, partials,
            N, C, input.stride(0), input.stride(1), target.stride(0),
            o_index, ignore_index, lam, lam + (1.0 - lam),
            gamma, dice_alpha, dice_smooth, label_smoothing,
            LOSS=K.LOSS_KINDS[loss], HAS_WEIGHT=weight is not None,
            SMOOTH=label_smoothing > 0, WRITE_NONE=none,
            BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)
    wrap_triton(mom_reduce_kernel)[(1,)](
        partials, out, coef, num_programs, mom_denom if mom_norm == "fixed" else N,
        lam, 1.0 - lam, REDUCTION=K.REDUCTIONS[reduction], ROWS_NORM=mom_norm != "valid",
        HAS_A=lam != 0.0, HAS_B=lam != 1.0, BLOCK=K.REDUCE_BLOCK, num_warps=4)
    return out, stats, coef


def _launch_backward(grad, input, target, weight, stats, coef, o_index, ignore_index, loss,
                     gamma, dice_alpha, dice_smooth, label_smoothing, dx) -> None:
    N, C = input.shape
    if N == 0:
        return
    block_n, block_c, warps = K.launch_config(C)
    w32 = _class_weights(weight)
    per_row = grad.dim() == 1
    wrap_triton(mom_bwd_kernel)[(triton.cdiv(N, block_n),)](
        grad, input, target, w32, stats, coef, dx,
        N, C, input.stride(0), input.stride(1), target.stride(0),
        grad.stride(0) if per_row else 0, dx.stride(0), dx.stride(1),
        o_index, ignore_index, gamma, dice_alpha, dice_smooth, label_smoothing,
        LOSS=K.LOSS_KINDS[loss], HAS_WEIGHT=weight is not None, SMOOTH=label_smoothing > 0,
        GRAD_PER_ROW=per_row, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=warps)


@_operator("momkernels::triton_mom_loss_bwd", mutates_args=(), fake=_bwd_fake)
def triton_mom_loss_bwd(
    grad: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor], stats: Tensor,
    coef: Tensor, o_index: int, ignore_index: int, loss: str, gamma: float, dice_alpha: float,
    dice_smooth: float, label_smoothing: float,
) -> Tensor:
    """d loss / d input as a new contiguous (N, C) tensor in input's dtype."""
    _check_inputs(input, target, weight)
    _check_backward(grad, input, stats, coef)
    dx = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    _launch_backward(grad, input, target, weight, stats, coef, o_index, ignore_index, loss,
                     gamma, dice_alpha, dice_smooth, label_smoothing, dx)
    return dx


@_operator("momkernels::triton_mom_loss_bwd_inplace", mutates_args=("input",),
           fake=_bwd_inplace_fake)
def triton_mom_loss_bwd_inplace(
    grad: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor], stats: Tensor,
    coef: Tensor, o_index: int, ignore_index: int, loss: str, gamma: float, dice_alpha: float,
    dice_smooth: float, label_smoothing: float,
) -> None:
    """d loss / d input written over ``input`` itself (see ``can_write_in_place``)."""
    _check_inputs(input, target, weight)
    _check_backward(grad, input, stats, coef)
    _launch_backward(grad, input, target, weight, stats, coef, o_index, ignore_index, loss,
                     gamma, dice_alpha, dice_smooth, label_smoothing, input)


def can_write_in_place(input: Tensor) -> bool:
    """True when every logit has its own memory cell (rows of unit-stride
    classes that do not overlap), so the gradient can replace the logits.
    Expanded (stride-0) or otherwise overlapping views cannot."""
    N, C = input.shape
    return input.stride(1) == 1 and (N <= 1 or input.stride(0) >= C)


def _setup_context(ctx, inputs, output):
    (input, target, weight, _lam, o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth,
     label_smoothing, _reduction, _mom_norm, _mom_denom, inplace_backward) = inputs
    _, stats, coef = output
    # The logits are saved as they are (no copy): the backward recomputes the
    # softmax from them and the per-row (max, log-normaliser) stats.
    ctx.save_for_backward(input, target, weight, stats, coef)
    ctx.options = (o_index, ignore_index, loss, gamma, dice_alpha, dice_smooth, label_smoothing)
    ctx.inplace = bool(inplace_backward) and can_write_in_place(input)
    ctx.mark_non_differentiable(stats, coef)


def _backward(ctx, grad_loss, _grad_stats, _grad_coef):
    input, target, weight, stats, coef = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        if ctx.inplace:
            torch.ops.momkernels.triton_mom_loss_bwd_inplace(
                grad_loss, input, target, weight, stats, coef, *ctx.options)
            grad_input = input
        else:
            grad_input = torch.ops.momkernels.triton_mom_loss_bwd(
                grad_loss, input, target, weight, stats, coef, *ctx.options)
    return (grad_input,) + (None,) * 14


triton_mom_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


def mom_loss(input: Tensor, target: Tensor, weight: Optional[Tensor],
             options: LossOptions) -> Tensor:
    """The loss of float16/bfloat16/float32 (N, C) logits via the Triton operators:
    ``options`` flattened to the schema of ``triton_mom_loss_fwd`` (the C++
    operators' arguments, then ``inplace_backward``)."""
    lam, o_index, *rest = options.op_args()
    # the Triton kernels take an int: -1 is no class (valid rows are in [0, C))
    o_index = -1 if o_index is None else o_index
    out, _, _ = torch.ops.momkernels.triton_mom_loss_fwd(
        input, target, weight, lam, o_index, *rest, options.inplace_backward)
    return out
