"""The loss's share of one training step, in the sequence-labelling example
(C = the data's BIO labels) and in its MRC framework (C = 2).

    python examples/ner/loss_share.py [--data DIR] [--model minilm] [--batches 20]

For each framework it takes ``--batches`` real training batches of the data
(``--batch-size`` sentences or (query, sentence) pairs, bucketed and padded as
the example trains), and times, per batch, with ``torch.set_num_threads``:

- the model step: forward, the MoM loss (paper normalisation, ``--lam``),
  backward (no optimiser step), with the loss computed by momkernels' ``cpp``
  backend and, separately, by its ``torch`` backend (eager PyTorch ops);
- the loss alone: forward + backward of the same loss on the batch's logits
  (a detached leaf), per backend.

It prints the medians over batches and the loss's share of the step (loss
alone / model step). What it says: how much of a fine-tuning step a faster
loss kernel can save at this model size (a 6-layer BERT on CPU), not the
kernel's speed (``python -m momkernels bench`` measures that).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import momkernels  # noqa: E402
import train  # noqa: E402
import train_mrc  # noqa: E402
from data import Prepared, bucketed_batches, collate_inputs  # noqa: E402
from model import build_model  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(prep, cfg, n_batches: int, lam: float) -> dict:
    """Median seconds of the model step and of the loss alone, per backend."""
    torch.manual_seed(0)
    model, _ = build_model(cfg.model, prep.labels, tokenizer=prep.tokenizer)
    model.train()
    rng = random.Random(0)
    lengths = [len(it["input_ids"]) for it in prep.train]
    batches = bucketed_batches(lengths, cfg.batch_size, rng)[:n_batches]
    C = len(prep.labels)
    times: dict = {k: [] for k in ("step cpp", "step torch", "loss cpp", "loss torch")}
    shapes = []

    def loss_of(logits, labels, backend):
        return momkernels.mom_cross_entropy(
            logits.reshape(-1, C), labels.reshape(-1), lam, o_index=prep.o_index,
            mom_norm=logits.shape[0] * cfg.max_length, backend=backend)

    for i, b in enumerate([batches[0]] + batches):  # the first batch again: warm-up
        inputs, labels = collate_inputs([prep.train[j] for j in b], prep.pad_id)
        with torch.no_grad():  # the batch's logits as a leaf, for the loss alone
            leaf = model(**inputs).logits.detach().requires_grad_(True)
        for backend in ("cpp", "torch"):
            def step():
                model.zero_grad(set_to_none=True)
                loss_of(model(**inputs).logits, labels, backend).backward()

            def loss_only():
                loss_of(leaf, labels, backend).backward()

            t_step = timed(step)
            t_loss = min(timed(loss_only) for _ in range(3))
            if i > 0:
                times[f"step {backend}"].append(t_step)
                times[f"loss {backend}"].append(t_loss)
        if i > 0:
            shapes.append(tuple(labels.shape))
    med = {k: statistics.median(v) for k, v in times.items()}
    med["rows"] = statistics.median(s[0] * s[1] for s in shapes)
    med["C"] = C
    return med


def main(argv=None) -> list:
    """Prints the table; returns [(framework, lam, medians)]."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="CoNLL-format folder (default: bundled WNUT-17)")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--max-train", type=int, default=2000,
                    help="sentences read from the training set (batches are drawn from them)")
    ap.add_argument("--lam", type=float, default=None,
                    help="MoM lambda (default: the example's, 0.175; MRC 0.446)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    common = ["--model", a.model, "--batch-size", str(a.batch_size), "--max-train",
              str(a.max_train), "--max-eval", "8", "--threads", str(a.threads)]
    if a.data:
        common += ["--data", a.data]
    rows = []
    for name, mod, prep_cls in (("sequence labelling", train, Prepared),
                                ("MRC", train_mrc, train_mrc.PreparedMRC)):
        cfg = train.finalize_config(mod.parser().parse_args(common))
        prep = prep_cls(cfg)
        lam = a.lam if a.lam is not None else cfg.lam
        m = measure(prep, cfg, a.batches, lam)
        rows.append((name, lam, m))
    print(f"\ndata {cfg.data.name}, model {a.model}, batch {a.batch_size}, "
          f"{a.batches} batches, {a.threads} threads, torch {torch.__version__}")
    print("| framework | C | lam | rows per batch (median) | step, cpp loss (ms) | "
          "step, torch loss (ms) | loss fwd+bwd cpp (ms) | loss fwd+bwd torch (ms) | "
          "loss share cpp | loss share torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, lam, m in rows:
        print(f"| {name} | {m['C']} | {lam:g} | {m['rows']:.0f} | {m['step cpp'] * 1e3:.1f} | "
              f"{m['step torch'] * 1e3:.1f} | {m['loss cpp'] * 1e3:.3f} | "
              f"{m['loss torch'] * 1e3:.3f} | {m['loss cpp'] / m['step cpp']:.2%} | "
              f"{m['loss torch'] / m['step torch']:.2%} |")
    return rows


if __name__ == "__main__":
    main()
