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

Gradient accumulation: ``Trainer`` (transformers >= 4.46, checked against 5.24)
calls ``compute_loss_func(outputs, labels, num_items_in_batch=N)`` where N is the
number of label tokens != -100 over *all* accumulated micro-batches (and, with
``average_tokens_across_devices``, all ranks), and then does not divide the loss
by the accumulation steps.  So when ``num_items_in_batch`` is given the loss is
``reduction="sum"`` divided by it -- the mean over the whole accumulated batch,
exactly what ``transformers``' own ``fixed_cross_entropy`` does.  Without it the
loss is the ordinary per-batch mean (``reduction="mean"``).  With class weights
and ``num_items_in_batch`` the denominator is a token count, not sum(w_y), as in
transformers.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..functional import mom_cross_entropy

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
                                  ignore_index: int = -100, **mom_kwargs) -> Tensor:
    """MoM loss of token-classification ``logits`` (..., C) against ``labels`` (...).

    Mean over valid tokens, or the sum divided by ``num_items_in_batch`` when given."""
    C = logits.shape[-1]
    x = logits.reshape(-1, C)
    y = labels.reshape(-1).to(x.device)
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
    ``o_index`` is the id of the "O" label.  Other keyword arguments go to
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
    changed, not the class."""
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
