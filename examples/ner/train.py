#!/usr/bin/env python
"""Fine-tune a BERT model for named-entity recognition with momkernels' losses.

    python examples/ner/train.py                      # WNUT-17 (bundled), all-MiniLM-L6-v2
    python examples/ner/train.py --data path/to/conll2003 --losses ce,mom --seeds 0,1,2
    torchrun --nproc_per_node=2 examples/ner/train.py --losses ce,mom   # DDP (gloo on CPU)

What a user of momkernels would write: a Hugging Face token classifier, AdamW
with linear warm-up and decay, gradient clipping, and the loss swapped for
momkernels' (``--losses``).  The runs of one seed start from the same
initialisation and see the same sentences in the same batches, so that they
differ only in the loss.  This file holds the options, the training loop and
main; beside it:

  data.py     reading CoNLL files, the BIO label scheme, the training subset,
              tokenisation with label alignment, batching, data warnings
  model.py    --model: minilm, tiny or a local folder, and its tokenizer
  losses.py   --losses and --mom-norm: the loss functions, also under torchrun
  report.py   metrics, records, summary tables and plots (the outputs)
  train_mrc.py  the paper's MRC framework on top of this loop ((query, sentence)
              pairs with binary labels, decoded back to BIO)

README.md beside this file has the results and the commands that made them.

Multi-process (torchrun, WORLD_SIZE > 1): DistributedDataParallel ("gloo" on
CPU, "nccl" on GPU).  Every rank builds the same global batches and takes its
slice (so ranks hold different numbers of tokens); the loss divides by the
global batch's token count (losses.py), so that DDP's gradient average equals
the single-process gradient of the mean loss over the global batch.  Rank 0
evaluates and writes the outputs.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data import DEFAULT_DATA, Prepared, bucketed_batches, collate_inputs, dist_info, warn
from losses import ALL_LOSSES, MOM_NORMS, make_loss_fn
from model import build_model
from report import (NERModelWarning, evaluate, load_records, majority_warning, norm_desc,
                    run_line, write_outputs)


# ------------------------------------------------------------------ options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help=f"folder of CoNLL column files (default: bundled WNUT-17, {DEFAULT_DATA}; "
                        "e.g. a CoNLL-2003 folder with eng.train / eng.testa / eng.testb)")
    p.add_argument("--model", default="minilm", help="minilm | tiny | local HF model folder")
    p.add_argument("--losses", default="ce,mom",
                   help="comma list of " + ",".join(ALL_LOSSES))
    p.add_argument("--lam", type=float, default=0.175, help="MoM lambda (paper: 0.175)")
    p.add_argument("--gamma", type=float, default=2.0, help="focal gamma")
    p.add_argument("--mom-norm", default="paper", choices=MOM_NORMS,
                   help="MoM term's denominator D_MoM (docs/spec.md): 'paper' (default) = "
                        "sentences in the batch x --max-length, the paper's (1/N)(1/M); 'valid' "
                        "= the batch's labelled tokens (weight 1 on O tokens, lam on entity "
                        "tokens); 'rows' = sentences x the batch's padded length (batches are "
                        "padded to their longest sentence, so not the paper's)")
    p.add_argument("--wce2-beta", type=float, default=1.0, help="beta of the wce2 weights")
    p.add_argument("--backend", default="auto", help="momkernels backend: auto|cpp|torch|triton")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=2,
                   help="2 with --batch-size 16: as many updates as 4 epochs of 32 in half the "
                        "time; with 2 epochs of 32, MoM (paper norm) predicted O everywhere on "
                        "WNUT-17 (README)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="gradient clipping threshold; 0 = no clipping (the norm is still recorded)")
    p.add_argument("--mom-clip", default="scaled", choices=("scaled", "same"),
                   help="scaled (default): a MoM loss is clipped at lam x --max-grad-norm. Its "
                        "gradient is about lam x CE's, so at CE's threshold it is almost never "
                        "clipped while CE is in a third of the steps, and AdamW ignores a "
                        "constant loss scale otherwise; clipping loss/lam at the threshold is "
                        "the same. same: every loss at --max-grad-norm (the Hugging Face "
                        "Trainer default and the paper's setting; reproduce_paper.py uses it)")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="linear warm-up over this fraction of the steps, then linear decay")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per step (see --epochs)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train", type=int, default=0, help="use a random subset of N sentences")
    p.add_argument("--train-fraction", type=float, default=0.0,
                   help="train on round(f x N) random sentences, N = --max-train or all "
                        "(0 = off)")
    p.add_argument("--subset-seed", type=int, default=1234,
                   help="seed of the random training subset (--max-train, --train-fraction)")
    p.add_argument("--max-eval", type=int, default=0, help="use the first N dev/test sentences")
    p.add_argument("--log-every", type=int, default=10, help="loss-curve window (steps)")
    p.add_argument("--eval-every-epoch", action="store_true", help="dev scores after every epoch")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 is much faster on a busy machine)")
    p.add_argument("--out", default="runs/ner")
    p.add_argument("--resume", action="store_true", help="skip loss x seed already in results.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def finalize_config(cfg):
    cfg.data = Path(cfg.data) if cfg.data else DEFAULT_DATA
    cfg.seed_list = [int(s) for s in str(cfg.seeds).split(",") if s.strip() != ""]
    cfg.loss_list = [s.strip() for s in cfg.losses.split(",") if s.strip()]
    for l in cfg.loss_list:
        if l not in ALL_LOSSES:
            raise SystemExit(f"--losses: unknown loss {l!r}; choose from {', '.join(ALL_LOSSES)}")
    ws, rank = dist_info()
    if cfg.device is None:
        cfg.device = (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available()
                      else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif ws > 1 and cfg.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ws))
    return cfg


def init_distributed(cfg):
    ws, rank = dist_info()
    if ws > 1 and not torch.distributed.is_initialized():
        # Import torch.distributed.nn before the process group exists.  Its
        # functions take ``group=group.WORLD`` as default arguments, bound when the
        # module is first imported; DistributedDataParallel's constructor imports it
        # (via torch.distributed._shard), so imported after init_process_group those
        # defaults hold the live WORLD group and destroy_process_group() cannot free
        # it.  Its gloo threads then outlive main() and are torn down during
        # interpreter exit, which can abort the process ("terminate called without
        # an active exception", SIGABRT) after the run has finished and written its
        # results.  Imported first, the defaults bind the pre-init placeholder.
        import torch.distributed.nn as _dist_nn  # noqa: F401 (binds no local "torch")
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(cfg.device))
        torch.distributed.init_process_group(backend)
    return ws, rank


# ------------------------------------------------------------------ training


def evaluate_items(prep, model, items, device) -> dict:
    """Scores (report.scores) of ``model`` on ``items`` (prep.dev or prep.test):
    ``prep.evaluate(model, items, device)`` when the data set defines one
    (train_mrc.py's pairs, decoded back to BIO sentences), else the
    sequence labeller's report.evaluate."""
    own = getattr(prep, "evaluate", None)
    if own is not None:
        return own(model, items, device)
    return evaluate(model, items, prep.labels, prep.pad_id, device)


def train_one(cfg, loss_name: str, seed: int, prepared: Optional[Prepared] = None, *,
              lam: Optional[float] = None, record_name: Optional[str] = None,
              eval_test: bool = True, epochs: Optional[int] = None) -> dict:
    """Train one model with ``loss_name`` and ``seed``; return the result record
    (only meaningful on rank 0 under torchrun; other ranks return {}).

    ``prepared``: a data.Prepared, or any object with its fields (train/dev/
    test items, labels, o_index, pad_id, tokenizer, weights, ...), such as
    train_mrc.PreparedMRC; batches go through data.collate_inputs (with
    token_type_ids when the items have them), scores through evaluate_items."""
    from transformers import get_linear_schedule_with_warmup
    from tqdm.auto import tqdm

    ws, rank = dist_info()
    distributed = ws > 1
    prep = prepared or Prepared(cfg)
    lam = cfg.lam if lam is None else lam
    epochs = cfg.epochs if epochs is None else epochs
    device = torch.device(cfg.device)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model, _ = build_model(cfg.model, prep.labels, prep.train_sents, tokenizer=prep.tokenizer)
    model.to(device)
    model.train()
    core = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    weight = prep.weights.get(loss_name)
    if weight is not None:
        weight = weight.to(device)
    loss_fn = make_loss_fn(loss_name, o_index=prep.o_index, lam=lam, gamma=cfg.gamma,
                           backend=cfg.backend, weight=weight, distributed=distributed,
                           mom_norm=cfg.mom_norm, max_length=cfg.max_length,
                           dice_alpha=getattr(cfg, "dice_alpha", 1.0),
                           dice_smooth=getattr(cfg, "dice_delta", 0.01))

    lengths = [len(d["input_ids"]) for d in prep.train]
    rng = random.Random(seed)
    epoch_batches = []  # per epoch: [(this rank's indices, sentences of the global batch)]
    for _ in range(epochs):
        bs = bucketed_batches(lengths, cfg.batch_size, rng)
        if distributed:  # every rank needs a non-empty slice of each global batch
            bs = [b for b in bs if len(b) >= ws]
        epoch_batches.append([(b[rank::ws], len(b)) for b in bs])
    total_steps = sum(len(b) for b in epoch_batches)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [
        {"params": [p for n, p in core.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in core.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    clip_at = clip_threshold(cfg, loss_name, lam)
    sched = get_linear_schedule_with_warmup(
        opt, int(getattr(cfg, "warmup_ratio", 0.1) * total_steps), total_steps)

    name = record_name or loss_name
    curve, window = [], []
    dev_history = []
    train_tokens = 0
    loss_seconds = 0.0
    train_seconds = 0.0
    step = 0
    grad_norms: list = []
    show = rank == 0 and not cfg.quiet
    for ep in range(epochs):
        bar = tqdm(epoch_batches[ep], desc=f"{name} seed {seed} epoch {ep + 1}/{epochs}",
                   disable=not show, leave=False, mininterval=1.0, dynamic_ncols=True)
        t0 = time.perf_counter()
        for b, global_sentences in bar:
            inputs, lab = collate_inputs([prep.train[i] for i in b], prep.pad_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            lab = lab.to(device)
            train_tokens += int(inputs["attention_mask"].sum())
            logits = model(**inputs).logits
            tl = time.perf_counter()
            loss = loss_fn(logits, lab, sentences=global_sentences)
            loss_seconds += time.perf_counter() - tl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # clip_at <= 0: no clipping (the norm is still measured and recorded)
            gn = float(torch.nn.utils.clip_grad_norm_(
                core.parameters(), clip_at if clip_at > 0 else float("inf")))
            grad_norms.append(gn)
            opt.step()
            sched.step()
            step += 1
            if distributed:  # each rank holds S_r * R / D: the global mean is their sum / R
                t = loss.detach().clone()
                torch.distributed.all_reduce(t)
                lv = float(t) / ws
            else:
                lv = float(loss.detach())
            window.append(lv)
            if len(window) == cfg.log_every:
                curve.append([step, float(np.mean(window))])
                window = []
            if step % 10 == 0:
                bar.set_postfix(loss=f"{lv:.4f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        if rank == 0 and cfg.eval_every_epoch or (rank == 0 and ep == epochs - 1):
            dev = evaluate_items(prep, core, prep.dev, device)
            dev_history.append({"epoch": ep + 1, "entity_f1": dev["entity_f1"],
                                "token_macro_f1": dev["token_macro_f1"]})
        if distributed:
            torch.distributed.barrier()
    if window:
        curve.append([step, float(np.mean(window))])
    if distributed:
        t = torch.tensor([float(train_tokens)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        train_tokens = int(t.item())
    if rank != 0:
        if distributed:
            torch.distributed.barrier()
        return {}
    test = evaluate_items(prep, core, prep.test, device) if eval_test else None
    if distributed:
        torch.distributed.barrier()
    run_warnings = []
    mw = majority_warning(test, "test") if test else (majority_warning(dev, "dev")
                                                       if dev_history else None)
    if mw:
        run_warnings.append(f"{name} seed {seed}: {mw}")
        warn(run_warnings[-1], NERModelWarning)
    is_mom = loss_name.startswith("mom")
    rec = {
        "loss": name, "loss_fn": loss_name, "seed": seed,
        "lam": lam if loss_name.startswith("mom") else 1.0,
        "mom_norm": cfg.mom_norm if is_mom else None,
        # the paper's D_MoM = sentences of the batch x this M
        "mom_norm_M": cfg.max_length if is_mom and cfg.mom_norm == "paper" else None,
        "gamma": cfg.gamma if "focal" in loss_name else None,
        "model": cfg.model, "data": str(cfg.data), "epochs": epochs, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "max_length": cfg.max_length,
        "n_train": len(prep.train), "n_train_full": prep.n_train_full,
        "train_fraction": prep.train_fraction or None, "subset_seed": prep.subset_seed,
        "train_subset_digest": prep.subset_digest,
        "warmup_ratio": getattr(cfg, "warmup_ratio", 0.1),
        "n_dev": len(prep.dev), "n_test": len(prep.test),
        "backend": cfg.backend if loss_name != "torch-ce" else "torch",
        "world_size": ws, "device": str(device), "torch_threads": torch.get_num_threads(),
        "labels": prep.labels,
        "dev": dev if dev_history else None,
        "dev_history": dev_history,
        "test": test,
        "train_seconds": train_seconds, "train_tokens": train_tokens,
        "tokens_per_s": train_tokens / train_seconds if train_seconds > 0 else None,
        "loss_seconds": loss_seconds, "steps": step,
        "max_grad_norm": cfg.max_grad_norm,
        "mom_clip": getattr(cfg, "mom_clip", "same") if is_mom else None,
        "clip_threshold": clip_at,  # the threshold this run was clipped at (0 = none)
        "grad_norm_median": float(np.median(grad_norms)) if grad_norms else None,
        "clipped_fraction": (float(np.mean([g > clip_at for g in grad_norms]))
                             if grad_norms and clip_at > 0 else 0.0),
        "loss_curve": curve,
        "warnings": list(prep.warnings) + run_warnings,
        "data_checks": prep.checks,
    }
    return rec


def clip_threshold(cfg, loss_name: str, lam: float) -> float:
    """The gradient-clipping threshold of a run (0 = no clipping).

    A MoM loss is lam x (the per-token loss over the labelled tokens) plus the
    O term, so its gradient is about lam times CE's (median norm 0.15 vs 0.84
    on WNUT-17: examples/ner/README.md).  AdamW is invariant to a constant
    loss scale, gradient clipping is not: at CE's threshold a MoM loss is
    almost never clipped.  ``--mom-clip scaled`` clips it at lam x
    --max-grad-norm, which is clipping loss/lam (CE plus the O term's extra
    weight) at --max-grad-norm; ``same`` keeps one threshold for all."""
    tau = cfg.max_grad_norm
    if tau > 0 and loss_name.startswith("mom") and getattr(cfg, "mom_clip", "same") == "scaled":
        return tau * lam
    return tau


def clip_desc(cfg) -> str:
    if not cfg.max_grad_norm > 0:
        return "max_grad_norm off"
    tail = (f" (MoM losses at λ × {cfg.max_grad_norm:g}: --mom-clip scaled)"
            if getattr(cfg, "mom_clip", "same") == "scaled" else "")
    return f"max_grad_norm {cfg.max_grad_norm:g}{tail}"


def resumed_records(cfg, out: Path, ws: int, rank: int) -> list:
    """The records already in ``out`` under --resume (rank 0 reads them; every
    rank must agree on which runs are left to do)."""
    records = load_records(out) if (cfg.resume and rank == 0) else []
    if ws > 1:
        obj = [records]
        torch.distributed.broadcast_object_list(obj, src=0)
        records = obj[0]
    return records


def run_grid(cfg, prep, train_fn, records: list, out: Path, rank: int, speed) -> None:
    """Every (seed, loss) of the config not yet in ``records``: train with
    ``train_fn``, append the record and rewrite the outputs after each run (rank 0);
    ``speed(rec)`` is the throughput text of the run's line."""
    done = {(r["loss"], r["seed"]) for r in records}
    for seed in cfg.seed_list:
        for loss in cfg.loss_list:
            if (loss, seed) in done:
                continue
            rec = train_fn(cfg, loss, seed, prep)
            if rank == 0:
                records.append(rec)
                write_outputs(records, out)
                print(run_line(rec) + "; " + speed(rec), flush=True)


def main(argv=None) -> list:
    cfg = finalize_config(parser().parse_args(argv))
    ws, rank = init_distributed(cfg)
    out = Path(cfg.out)
    t_start = time.perf_counter()
    records = resumed_records(cfg, out, ws, rank)
    prep = Prepared(cfg)
    if rank == 0:
        print(f"data {cfg.data}: train {len(prep.train)} (of {prep.n_train_full}) / dev "
              f"{len(prep.dev)} / test {len(prep.test)} sentences, {len(prep.labels)} labels; "
              f"model {cfg.model}; losses {','.join(cfg.loss_list)}; seeds {cfg.seed_list}; "
              f"{cfg.epochs} epochs; world size {ws}; device {cfg.device}, "
              f"{torch.get_num_threads()} threads", flush=True)
    run_grid(cfg, prep, train_one, records, out, rank,
             speed=lambda rec: f"{rec['tokens_per_s']:,.0f} tokens/s")
    if rank == 0:
        header = (f"{cfg.model} on {cfg.data} ({len(prep.train)} train sentences, {cfg.epochs} "
                  f"epochs, seeds {cfg.seed_list}, world size {ws}); MoM: λ = {cfg.lam}, "
                  f"{norm_desc(cfg.mom_norm, cfg.max_length)}; {clip_desc(cfg)}; "
                  "test split, mean ± std over seeds (×100); "
                  f"wall {time.perf_counter() - t_start:.0f} s")
        table = write_outputs(records, out, header)
        print("\n" + header + "\n" + table, flush=True)
        print(f"\nwrote {out}/results.json, results.csv, summary.md, f1_per_loss.png, "
              "loss_curves.png", flush=True)
    if ws > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
