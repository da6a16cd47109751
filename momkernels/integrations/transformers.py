"""Hugging Face ``transformers`` integration.

Two ways to train a ``*ForTokenClassification`` model with MoM loss::

    from momkernels.integrations.transformers import mom_compute_loss_func, use_mom_loss

    # 1. Trainer: pass a compute_loss_func
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      compute_loss_func=mom_compute_loss_func(lam=0.175, o_index=label2id["O"]))

    # 2. any loop (or Trainer without compute_loss_func): patch the model instance
    model = use_mom_loss(model, lam=0.175, o_index=label2id["O"])
    out = model(input_ids=..., attention_mask=..., labels=labels)   # out.loss is the MoM loss
    out.loss.backward()

Labels follow the Hugging Face convention: -100 on ignored positions (special
tokens, padding, non-first sub-words).

Normalisation: by default (``mom_norm="paper"``) the MoM term is divided by
(sentences in the batch) x ``padded_length`` (M = 128 in the paper), the
paper's (1/N)(1/M), whatever length the collator padded the batch to: the
sentence count is the first dimension of ``labels`` (docs/spec.md explains
the reading).  ``mom_norm="valid"`` or ``"rows"`` (or a number) are passed to
:func:`momkernels.mom_cross_entropy` as they are::

    # the paper's normalisation for inputs of at most 256 sub-words
    compute_loss_func=mom_compute_loss_func(lam=0.175, o_index=0, padded_length=256)
    # momkernels' per-token re-weighting (O tokens weigh 1, entity tokens lam)
    model = use_mom_loss(model, lam=0.175, mom_norm="valid")

Gradient accumulation: ``Trainer`` (transformers >= 4.46, checked against 5.24)
calls ``compute_loss_func(outputs, labels, num_items_in_batch=N)`` where N is the
number of label tokens != -100 over *all* accumulated micro-batches (and, with
``average_tokens_across_devices``, all ranks), and then does not divide the loss
by the accumulation steps.  So when ``num_items_in_batch`` is given the loss is
``reduction="sum"`` divided by it -- the mean over the whole accumulated batch,
exactly what ``transformers``' own ``fixed_cross_entropy`` does.  Without it the
loss is the ordinary per-batch mean (``reduction="mean"``).  With class weights
and ``num_items_in_batch`` the denominator is a token count, not sum(w_y), as in
transformers.  With the paper's normalisation and ``num_items_in_batch`` the
micro-batch's paper loss (mean CE term, MoM term over sentences x M) is
weighted by its share of the label tokens, D_batch / num_items_in_batch: the
CE term is then exactly sum / num_items_in_batch as above, and the MoM term
is exact without accumulation; with accumulation its sentence count is
estimated from the token share (exact when micro-batches have the same
tokens per sentence).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..functional import mom_cross_entropy
from ..rows import valid_denominator

PAPER_PADDED_LENGTH = 128  # M of the paper's experiments

__all__ = ["mom_compute_loss_func", "use_mom_loss", "mom_token_classification_loss"]


def _logits_of(outputs: Any) -> Tensor:
    if isinstance(outputs, dict):
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)):
        # tuple outputs: (logits, ...) when no loss was computed
        return outputs[0]
    if isinstance(outputs, Tensor):
        return outputs
    raise TypeError(f"cannot find logits in model outputs of type {type(outputs).__name__}")


def mom_token_classification_loss(logits: Tensor, labels: Tensor, num_items_in_batch=None, *,
                                  lam: float = 0.175, o_index: int = 0,
                                  ignore_index: int = -100, mom_norm="paper",
                                  padded_length: int = PAPER_PADDED_LENGTH,
                                  **mom_kwargs) -> Tensor:
    """MoM loss of token-classification ``logits`` (B, T, C) against ``labels`` (B, T).

    Mean over valid tokens, or the sum divided by ``num_items_in_batch`` when
    given.  ``mom_norm="paper"``: the MoM term over B x ``padded_length``
    (see the module docstring); other values go to ``mom_cross_entropy``."""
    C = logits.shape[-1]
    x = logits.reshape(-1, C)
    y = labels.reshape(-1).to(x.device)
    if isinstance(mom_norm, str) and mom_norm == "paper":
        if isinstance(padded_length, bool) or not isinstance(padded_length, int) \
                or padded_length < 1:
            raise ValueError(f"padded_length must be a positive int; got {padded_length!r}")
        sentences = labels.shape[0] if labels.dim() > 1 else 1
        paper = mom_cross_entropy(x, y, lam, o_index=o_index, ignore_index=ignore_index,
                                  reduction="mean", mom_norm=sentences * padded_length,
                                  **mom_kwargs)
        if num_items_in_batch is None:
            return paper
        share = valid_denominator(y, mom_kwargs.get("weight"), ignore_index)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(paper.device)
        # a micro-batch without label tokens adds 0 (its mean is 0/0)
        frac = (share / num_items_in_batch).to(paper.dtype)
        return torch.where(frac > 0, paper * frac, torch.zeros_like(paper))
    mom_kwargs["mom_norm"] = mom_norm
    if num_items_in_batch is None:
        return mom_cross_entropy(x, y, lam, o_index=o_index, ignore_index=ignore_index,
                                 reduction="mean", **mom_kwargs)
    s = mom_cross_entropy(x, y, lam, o_index=o_index, ignore_index=ignore_index,
                          reduction="sum", **mom_kwargs)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(s.device)
    return s / num_items_in_batch


def mom_compute_loss_func(lam: float = 0.175, o_index: int = 0, **mom_kwargs
                          ) -> Callable[..., Tensor]:
    """A ``compute_loss_func`` for ``transformers.Trainer``: returns
    ``f(outputs, labels, num_items_in_batch=None) -> loss``.

    ``lam`` defaults to the paper's value for BERT-base on CoNLL-2003 (0.175);
    ``o_index`` is the id of the "O" label.  ``mom_norm`` defaults to
    ``"paper"`` (MoM term over sentences x ``padded_length``, default 128; see
    the module docstring).  Other keyword arguments go to
    :func:`momkernels.mom_cross_entropy` (``loss="focal"``, ``weight=``,
    ``backend=``, ``ignore_index=`` ...; not ``reduction``)."""
    if "reduction" in mom_kwargs:
        raise ValueError("mom_compute_loss_func: reduction is chosen by the Trainer protocol "
                         "(mean, or sum / num_items_in_batch)")

    def compute_loss_func(outputs, labels, num_items_in_batch=None):
        if labels is None:
            raise ValueError("mom_compute_loss_func: labels is None (the batch has no 'labels')")
        return mom_token_classification_loss(_logits_of(outputs), labels, num_items_in_batch,
                                             lam=lam, o_index=o_index, **mom_kwargs)

    compute_loss_func.lam = lam
    compute_loss_func.o_index = o_index
    return compute_loss_func


def use_mom_loss(model, lam: float = 0.175, o_index: Optional[int] = None, **mom_kwargs):
    """Make a ``*ForTokenClassification`` model instance compute MoM loss when it
    is called with ``labels=``; returns the same model.

    The instance's ``forward`` is wrapped: it runs the original forward without
    ``labels`` (so the model's own ``CrossEntropyLoss`` is never computed) and
    sets ``outputs.loss`` from the logits.  A ``num_items_in_batch`` keyword (the
    Trainer passes it to models that accept loss kwargs) divides the summed loss.
    ``o_index`` defaults to ``model.config.label2id["O"]`` when present, else 0.
    Calling it again replaces the previous settings.  Only this instance is
    changed, not the class.  ``mom_norm`` defaults to ``"paper"`` (MoM term
    over sentences x ``padded_length``, default 128; see the module docstring)."""
    if "reduction" in mom_kwargs:
        raise ValueError("use_mom_loss: reduction is always the mean (or sum / num_items_in_batch)")
    if o_index is None:
        label2id = getattr(getattr(model, "config", None), "label2id", None) or {}
        o_index = int(label2id.get("O", 0))
    orig = getattr(model, "_momkernels_orig_forward", None)
    if orig is None:
        orig = model.forward  # bound method of the class's forward
        model._momkernels_orig_forward = orig

    @functools.wraps(orig)
    def forward(*args, labels=None, num_items_in_batch=None, **kwargs):
        return_dict = kwargs.get("return_dict", None)
        outputs = orig(*args, **kwargs)
        if labels is None:
            return outputs
        logits = _logits_of(outputs)
        loss = mom_token_classification_loss(logits, labels, num_items_in_batch,
                                             lam=lam, o_index=o_index, **mom_kwargs)
        if isinstance(outputs, tuple) or return_dict is False:
            return (loss,) + tuple(outputs)
        outputs.loss = loss
        return outputs

    model.forward = forward
    model.mom_loss_config = dict(lam=lam, o_index=o_index, **mom_kwargs)
    return model
