"""The options of one loss call as one frozen, validated value.

``LossOptions`` holds every scalar argument of ``mom_cross_entropy`` (and of
``MoMLoss``): the loss and its parameters, lam, o_index, ignore_index,
reduction, mom_norm, the requested backend and the two switches.  Its
constructor is the one place where they are checked (docs/spec.md §8): the
public functions build one per call, ``MoMLoss`` builds one in ``__init__``
and keeps it, and the backends take it as it is.  Each backend turns it into
its own arguments in one place: ``op_args`` for the operators' schema
(csrc/registration.cpp; the Triton operators take the same), keywords of
``reference.mom_cross_entropy`` for the ``"torch"`` backend
(``backends.py``).

The checks read no tensor: they run the same way under
``torch.compile(fullgraph=True)``, where a numeric ``mom_norm`` may be a
``torch.SymInt`` (docs/spec.md §9).  What depends on the input's shape
(``o_index`` < C) is checked by ``functional.forward``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = ["LossOptions", "check_mom_norm", "mom_norm_args",
           "LOSSES", "REDUCTIONS", "MOM_NORMS", "BACKEND_CHOICES"]

LOSSES = ("ce", "focal", "dice")
REDUCTIONS = ("mean", "sum", "none")
MOM_NORMS = ("valid", "rows")
# the names ``backend=`` accepts; backends.py's table has a row for each but "auto"
BACKEND_CHOICES = ("auto", "triton", "cpp", "torch")


def check_mom_norm(mom_norm) -> None:
    """"valid", "rows", or a positive finite number (int or float, not bool;
    a SymInt / SymFloat under torch.compile).  docs/spec.md §5."""
    if isinstance(mom_norm, str):
        if mom_norm not in MOM_NORMS:
            raise ValueError(f"mom_norm must be one of {MOM_NORMS} or a positive number; "
                             f"got {mom_norm!r}")
        return
    if isinstance(mom_norm, bool):
        raise ValueError(f"mom_norm must be one of {MOM_NORMS} or a positive number, not a "
                         f"bool; got {mom_norm!r}")
    if not isinstance(mom_norm, (numbers.Real, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"mom_norm must be one of {MOM_NORMS} or a positive number; got "
                        f"{type(mom_norm).__name__} {mom_norm!r}")
    if not 0 < mom_norm < math.inf:  # also rejects NaN
        raise ValueError(f"mom_norm must be a positive finite number when it is a number; "
                         f"got {mom_norm!r}")


def mom_norm_args(mom_norm) -> tuple:
    """The operators' form of a validated ``mom_norm``: ("valid" | "rows", 0)
    for the names, ("fixed", number) for a number (docs/spec.md §10).  The
    number is passed on as it is (the ops take a Scalar): under torch.compile a
    SymInt such as ``labels.shape[0] * 128`` stays symbolic, so a new batch
    size does not compile a new graph."""
    if isinstance(mom_norm, str):
        return mom_norm, 0
    return "fixed", mom_norm


@dataclass(frozen=True)
class LossOptions:
    """Validated scalar options of one loss call (docs/spec.md §2-§5).

    The fields are ``mom_cross_entropy``'s keyword arguments, except the
    tensors (``weight`` travels beside the options, so that a module's weight
    buffer follows ``.to(device)``) and ``mom_term``: False for
    ``momkernels.cross_entropy``, which has no majority class, so ``o_index``
    is None and lam is 1 (use ``LossOptions.cross_entropy``).

    The constructor raises the errors of docs/spec.md §8 for the first wrong
    argument in a fixed order: lam, o_index, ignore_index, loss, reduction,
    mom_norm, backend, gamma, dice_alpha, dice_smooth, label_smoothing,
    inplace_backward.  It stores lam, gamma, dice_alpha, dice_smooth and
    label_smoothing as Python floats, o_index and ignore_index as ints.
    ``replace`` (``dataclasses.replace``) runs the same checks on the new
    values.
    """

    lam: float = 0.5
    o_index: Optional[int] = 0
    ignore_index: int = -100
    loss: str = "ce"
    gamma: float = 2.0
    dice_alpha: float = 1.0
    dice_smooth: float = 0.01
    label_smoothing: float = 0.0
    reduction: str = "mean"
    mom_norm: Union[str, float] = "valid"
    backend: str = "auto"
    check_targets: bool = False
    # the Triton backward writes the gradient over the logits (momkernels/triton/__init__.py)
    inplace_backward: bool = False
    mom_term: bool = True

    @classmethod
    def cross_entropy(cls, *, ignore_index: int = -100, reduction: str = "mean",
                      label_smoothing: float = 0.0, backend: str = "auto",
                      check_targets: bool = False) -> "LossOptions":
        """The options of ``momkernels.cross_entropy``: the MoM loss with lam = 1
        and no majority class."""
        return cls(lam=1.0, o_index=None, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, backend=backend,
                   check_targets=check_targets, mom_term=False)

    def __post_init__(self) -> None:
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            raise TypeError(f"lam must be a real number in [0, 1]; got {lam!r}")
        if not (0.0 <= lam <= 1.0):  # also rejects NaN
            raise ValueError(f"lam must be in [0, 1]; got {lam}")
        if not self.mom_term and not (lam == 1.0 and self.o_index is None):
            raise ValueError("LossOptions(mom_term=False) is plain cross-entropy: lam must be 1 "
                             f"and o_index None; got lam={lam}, o_index={self.o_index!r}")
        indices = (("o_index", self.o_index), ("ignore_index", self.ignore_index))
        for name, v in indices if self.mom_term else indices[1:]:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int; got {v!r}")
            if not -2**63 <= v < 2**63:
                raise ValueError(f"{name} must fit in int64; got {v}")
        if self.o_index == self.ignore_index:
            raise ValueError(f"o_index must differ from ignore_index; both are {self.o_index}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}; got {self.reduction!r}")
        check_mom_norm(self.mom_norm)
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}; got {self.backend!r}")
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {self.gamma}")
        if not self.dice_alpha >= 0:
            raise ValueError(f"dice_alpha must be >= 0; got {self.dice_alpha}")
        if not self.dice_smooth > 0:
            raise ValueError(f"dice_smooth must be > 0; got {self.dice_smooth}")
        if not (0.0 <= self.label_smoothing <= 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1]; got {self.label_smoothing}")
        if self.label_smoothing > 0 and self.loss != "ce":
            raise ValueError(
                f"label_smoothing > 0 is only defined for loss='ce'; got loss={self.loss!r} "
                f"with label_smoothing={self.label_smoothing}")
        if self.inplace_backward and self.backend != "triton":
            raise ValueError("inplace_backward=True is a feature of backend='triton' (its "
                             "backward writes the gradient over the logits); got "
                             f"backend={self.backend!r}")
        # plain Python numbers: the operators take double and int64, and the
        # reference computes with the same values
        for name in ("lam", "gamma", "dice_alpha", "dice_smooth", "label_smoothing"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "ignore_index", int(self.ignore_index))
        if self.o_index is not None:
            object.__setattr__(self, "o_index", int(self.o_index))
        object.__setattr__(self, "inplace_backward", bool(self.inplace_backward))

    def replace(self, **changes) -> "LossOptions":
        """A copy with ``changes`` applied, checked like the constructor's arguments."""
        return dataclasses.replace(self, **changes)

    def op_args(self) -> tuple:
        """The scalar arguments of ``mom_loss_fwd`` after (input, target, weight),
        in schema order: lam, o_index, ignore_index, loss, gamma, dice_alpha,
        dice_smooth, label_smoothing, reduction, mom_norm, mom_denom.
        ``o_index`` is None for plain cross-entropy (the schema's ``int? o_index``)."""
        norm, denom = mom_norm_args(self.mom_norm)
        return (self.lam, self.o_index, self.ignore_index, self.loss, self.gamma,
                self.dice_alpha, self.dice_smooth, self.label_smoothing, self.reduction,
                norm, denom)
