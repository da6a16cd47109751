"""Integrations of momkernels' losses with training frameworks.

- :mod:`momkernels.integrations.transformers` -- Hugging Face ``Trainer``
  (``compute_loss_func``) and ``*ForTokenClassification`` models.
- :mod:`momkernels.integrations.distributed` -- a global-mean MoM loss for
  ``DistributedDataParallel`` (denominator = all ranks' valid tokens).

The submodules are imported lazily so that ``import momkernels`` never needs
``transformers``.
"""

__all__ = ["transformers", "distributed"]
