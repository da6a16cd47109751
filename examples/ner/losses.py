"""The losses of the NER example (``--losses``), each as one function
f(logits (B, T, C), labels (B, T), sentences=None) -> the scalar to backpropagate.

  torch-ce   torch.nn.functional.cross_entropy (the baseline)
  ce         momkernels.cross_entropy
  mom        momkernels.mom_cross_entropy(lam=--lam, o_index=id("O"), mom_norm=...)
  focal      focal loss (lam=1, loss="focal", gamma=--gamma)
  dice       self-adjusting dice loss (lam=1, loss="dice")
  mom-focal, mom-dice   MoM on top of focal / dice (lam=--lam)
  wce        weighted CE, w_k = 1/count_k normalised to mean 1 (training labels)
  wce2       the paper's weighted CE, w_k = log10((s - s_k)/s_k + beta), s = all
             training tokens, s_k = tokens of class k, beta = --wce2-beta (1.0)
Every loss except torch-ce goes through momkernels; torch-ce is there to show
that ``ce`` trains exactly like plain PyTorch.

MoM normalisation (``--mom-norm``): the paper's loss is
(1/N) sum_n [lam * L(sentence n) + (1 - lam) * (1/M) sum_{i: y_i = O} l_i] with M
the fixed padded input length (128 in its experiments) and L the mean CE over
the batch's labelled tokens, so its MoM term is divided by N x M.
  paper  (default) D_MoM = sentences in the batch x --max-length (M = 128),
         passed to momkernels as a number: an O token gets an extra weight
         (1 - lam)/lam x (labelled tokens per sentence)/M relative to the CE term
  valid  D_MoM = the batch's labelled tokens (momkernels' default): a per-token
         re-weighting, weight 1 on O tokens and lam on entity tokens
  rows   D_MoM = all rows of the logits = sentences x the batch's padded length;
         this example pads each batch only to its longest sentence, so this is
         NOT the paper's normalisation (it is B x T with T <= --max-length)
Records, tables and plots name the normalisation of every MoM run.

Multi-process (torchrun): every rank holds a slice of the global batch with
its own number of tokens, so a per-rank mean would weigh the ranks' tokens
unequally.  The loss on each rank is the summed loss * world_size / D, with D
the *global* number of valid tokens
(momkernels.integrations.distributed.global_mean_mom_cross_entropy), so that
DDP's gradient average equals the single-process gradient of the mean loss
over the global batch.  The paper's normalisation works the same way with
D_MoM = sentences of the *global* batch x M (known on every rank: the batch
before slicing); "rows" is refused under torchrun (each rank pads its slice to
its own length, so the rows are not those of the single-process batch).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:  # the installed momkernels (tools/bootstrap.sh), else the source tree
    import momkernels
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import momkernels
from momkernels.integrations.distributed import (  # noqa: E402
    global_denominator,
    global_mean_mom_cross_entropy,
)

ALL_LOSSES = ("torch-ce", "ce", "mom", "focal", "dice", "mom-focal", "mom-dice", "wce", "wce2")
MOM_NORMS = ("paper", "valid", "rows")


def make_loss_fn(loss_name: str, *, o_index: int, lam: float, gamma: float, backend: str,
                 weight: Optional[torch.Tensor], distributed: bool, mom_norm: str = "paper",
                 max_length: int = 128, dice_alpha: float = 1.0, dice_smooth: float = 0.01):
    """f(logits (B, T, C), labels (B, T), sentences=None) -> scalar loss (mean
    over valid tokens of the global batch under DDP, see module docstring).

    ``mom_norm`` (MoM losses only): "paper" = D_MoM of sentences x
    ``max_length``, "valid" or "rows" (see the module docstring).
    ``sentences``: the number of sentences of the *global* batch, needed by
    "paper" under DDP (default: B of ``logits``, right for one process).
    ``dice_alpha``, ``dice_smooth`` (dice and mom-dice only): the dice loss's
    alpha and delta (momkernels' defaults, 1.0 and 0.01)."""
    if mom_norm not in MOM_NORMS:
        raise ValueError(f"mom_norm must be one of {MOM_NORMS}; got {mom_norm!r}")
    if loss_name == "torch-ce":
        if distributed:
            def f(logits, labels, sentences=None):
                C = logits.shape[-1]
                s = F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1),
                                    ignore_index=-100, reduction="sum")
                d = global_denominator(labels)
                return s * (torch.distributed.get_world_size() / d)
        else:
            def f(logits, labels, sentences=None):
                C = logits.shape[-1]
                return F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), ignore_index=-100)
        return f

    kw: dict = {"backend": backend, "o_index": o_index}
    paper = loss_name.startswith("mom") and mom_norm == "paper"
    if loss_name.startswith("mom") and mom_norm == "rows":
        if distributed:
            raise SystemExit("--mom-norm rows is not supported with torchrun (each rank pads its "
                             "slice to its own length); use paper or valid")
        kw["mom_norm"] = "rows"
    if loss_name in ("ce", "wce", "wce2"):
        kw.update(lam=1.0, loss="ce", weight=weight if loss_name != "ce" else None)
    elif loss_name == "mom":
        kw.update(lam=lam, loss="ce")
    elif loss_name == "focal":
        kw.update(lam=1.0, loss="focal", gamma=gamma)
    elif loss_name == "dice":
        kw.update(lam=1.0, loss="dice", dice_alpha=dice_alpha, dice_smooth=dice_smooth)
    elif loss_name == "mom-focal":
        kw.update(lam=lam, loss="focal", gamma=gamma)
    elif loss_name == "mom-dice":
        kw.update(lam=lam, loss="dice", dice_alpha=dice_alpha, dice_smooth=dice_smooth)
    else:
        raise ValueError(f"unknown loss {loss_name!r}: choose from {', '.join(ALL_LOSSES)}")

    def norm_kw(logits, sentences):
        if not paper:
            return kw
        if sentences is None:
            if distributed:
                raise ValueError("mom_norm='paper' under DDP needs sentences= (the global batch)")
            sentences = logits.shape[0]
        return {**kw, "mom_norm": int(sentences) * max_length}

    if distributed:
        def f(logits, labels, sentences=None):
            C = logits.shape[-1]
            return global_mean_mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1),
                                                 **norm_kw(logits, sentences))
    elif loss_name in ("ce", "wce", "wce2"):
        w = kw["weight"]

        def f(logits, labels, sentences=None):
            C = logits.shape[-1]
            return momkernels.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), weight=w,
                                            backend=backend)
    else:
        def f(logits, labels, sentences=None):
            C = logits.shape[-1]
            return momkernels.mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1),
                                                **norm_kw(logits, sentences))
    return f
