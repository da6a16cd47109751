"""Scores, records, tables and plots of the NER example.

Metrics (printed and tabulated x100): entity precision/recall/F1 from seqeval
(default mode, BIO tags) on word-level predictions (the prediction of a word =
that of its first sub-word; words cut off by --max-length are predicted "O");
token-level macro precision/recall/F1 = unweighted mean over all BIO label
classes, "O" included, of per-class scores on word-level tags (the paper's
"macro-F1 over token classes"); per-class entity scores from seqeval's
classification_report; word accuracy, sentence accuracy (every tag right) and
sentence accuracy by sentence length in 5-word bins (the paper's Table 7).
Entity F1 is the usual NER score; the others are the MoM paper's views, kept
in every record so that reproduce_paper.py can tabulate them (its Tables 3, 5
and 7) without rerunning anything.  Sentence accuracy by length is kept as
counts, so that the runs of a loss can be pooled.

After training (NERModelWarning): a model that predicts the majority tag for
more than 99 % of the test words while gold has at least twice as many other
tags, or that finds no gold entity at all.  Its entity F1 near 0 says "this
model collapsed to O", not "this loss is a little worse", and the warning says
so.

Outputs in ``--out`` (default runs/ner): results.json (one record per loss x
seed, rewritten after every run, so an interrupted command loses only the run
in progress; ``--resume`` skips finished runs), results.csv, summary.md (the
printed table), f1_per_loss.png, loss_curves.png.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from data import collate

MAJORITY_WARN = 0.99   # predicted word tags equal to the gold majority tag


class NERModelWarning(UserWarning):
    """A trained model predicts (almost) only the majority tag."""


# ------------------------------------------------------------------ metrics


def token_macro_prf(gold_tags, pred_tags, labels) -> tuple[float, float, float]:
    """Macro precision/recall/F1 over ``labels`` (all BIO classes incl. O) of
    word-level tags; a class never predicted/present scores 0 (sklearn's
    zero_division=0), every class in ``labels`` counts."""
    lab_id = {l: i for i, l in enumerate(labels)}
    g = np.array([lab_id[t] for s in gold_tags for t in s])
    p = np.array([lab_id.get(t, 0) for s in pred_tags for t in s])
    C = len(labels)
    tp = np.bincount(g[g == p], minlength=C).astype(float)
    pc = np.bincount(p, minlength=C).astype(float)
    gc = np.bincount(g, minlength=C).astype(float)
    prec = np.divide(tp, pc, out=np.zeros(C), where=pc > 0)
    rec = np.divide(tp, gc, out=np.zeros(C), where=gc > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(C), where=(prec + rec) > 0)
    return float(prec.mean()), float(rec.mean()), float(f1.mean())


def scores(gold_tags, pred_tags, labels) -> dict:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    tp, tr, tf = token_macro_prf(gold_tags, pred_tags, labels)
    rep = classification_report(gold_tags, pred_tags, output_dict=True, zero_division=0)
    per_class = {k: {m: float(v[m]) for m in ("precision", "recall", "f1-score", "support")}
                 for k, v in rep.items()}
    # the paper's other views: word-level accuracy, sentence-level accuracy (every
    # tag of the sentence right) overall and by sentence length in 5-word bins
    # (its Table 7: bin k holds lengths 5k+1 .. 5k+5); counts, so runs can be pooled
    words = sum(len(g) for g in gold_tags)
    word_ok = sum(int(a == b) for g, p in zip(gold_tags, pred_tags) for a, b in zip(g, p))
    by_len: dict = {}
    for g, p in zip(gold_tags, pred_tags):
        k = str(max(len(g) - 1, 0) // 5)
        c = by_len.setdefault(k, [0, 0])
        c[0] += int(list(g) == list(p))
        c[1] += 1
    sent_ok = sum(c[0] for c in by_len.values())
    gold_counts = Counter(t for g in gold_tags for t in g)
    major = gold_counts.most_common(1)[0][0] if gold_counts else "O"
    pred_major = sum(int(t == major) for p in pred_tags for t in p)
    return {
        "majority_tag": major,
        "gold_majority_fraction": gold_counts[major] / words if words else 0.0,
        "pred_majority_fraction": pred_major / max(sum(len(p) for p in pred_tags), 1),
        "gold_entities": int(sum(int(t.startswith("B-")) for g in gold_tags for t in g)),
        "word_accuracy": word_ok / words if words else 0.0,
        "sentence_accuracy": sent_ok / len(gold_tags) if gold_tags else 0.0,
        "sentence_accuracy_by_length": by_len,
        "entity_precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "entity_recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
        "entity_f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "token_macro_precision": tp, "token_macro_recall": tr, "token_macro_f1": tf,
        "per_class": per_class,
    }


@torch.no_grad()
def evaluate(model, data, labels, pad_id, device, batch_size=64) -> dict:
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    preds: list[Optional[list[str]]] = [None] * len(data)
    for s in range(0, len(order), batch_size):
        bidx = order[s:s + batch_size]
        ids, mask, _ = collate([data[i] for i in bidx], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        am = logits.argmax(-1).cpu().numpy()
        for row, i in enumerate(bidx):
            preds[i] = [labels[am[row, p]] if p >= 0 else "O" for p in data[i]["first"]]
    model.train(was_training)
    return scores([d["tags"] for d in data], preds, labels)


def majority_warning(sc: dict, split: str = "test") -> Optional[str]:
    """A warning when the predictions of ``scores()`` ``sc`` are (almost) only the
    gold majority tag: more than MAJORITY_WARN of the predicted word tags are
    that tag while gold has at least twice as many other tags, or gold has
    entities and the model finds none (entity recall 0)."""
    pf, gf = sc.get("pred_majority_fraction"), sc.get("gold_majority_fraction")
    if pf is None or gf is None:
        return None
    tag = sc.get("majority_tag", "O")
    if pf > MAJORITY_WARN and (1 - gf) > 2 * (1 - pf):
        return (f"{split}: the model predicts {tag!r} for {100 * pf:.1f} % of the words, gold "
                f"has {100 * gf:.1f} % {tag!r} (entity recall {100 * sc['entity_recall']:.1f})")
    if sc.get("gold_entities", 0) > 0 and sc["entity_recall"] == 0:
        return (f"{split}: the model finds none of the {sc['gold_entities']} gold entities "
                f"(entity recall 0; {100 * pf:.1f} % of the words predicted {tag!r})")
    return None


# ------------------------------------------------------------------ tables, files and plots


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    m = float(np.mean(xs))
    s = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return m, s


def fmt_pct(xs) -> str:
    """mean ± std (over seeds) of fractions, x100, or — when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m, s = mean_std([x * 100 for x in xs])
    return f"{m:.2f} ± {s:.2f}"


def paired_ttest(records, metric: str, loss: str, baseline: str = "ce"):
    """p-value of scipy.stats.ttest_rel of ``metric`` (test split) of ``loss`` vs
    ``baseline``, paired by seed; None with < 2 common seeds."""
    from scipy.stats import ttest_rel

    a = {r["seed"]: r["test"][metric] for r in records if r["loss"] == loss and r.get("test")}
    b = {r["seed"]: r["test"][metric] for r in records if r["loss"] == baseline and r.get("test")}
    common = sorted(set(a) & set(b))
    if len(common) < 2 or loss == baseline:
        return None
    x = [a[s] for s in common]
    y = [b[s] for s in common]
    if np.allclose(np.subtract(x, y), np.mean(np.subtract(x, y))):
        return 1.0 if np.allclose(x, y) else 0.0
    return float(ttest_rel(x, y).pvalue)


def norm_desc(mom_norm: str, max_length: int = 128) -> str:
    """Words for a --mom-norm value (tables and headers)."""
    return {"paper": f"mom_norm paper (D_MoM = sentences x {max_length}, the paper's)",
            "valid": "mom_norm valid (D_MoM = labelled tokens)",
            "rows": "mom_norm rows (D_MoM = sentences x the batch's padded length)"}.get(
                mom_norm, f"mom_norm {mom_norm}")


def warning_lines(records) -> list:
    """The distinct warnings of ``records`` (data checks and trained models)."""
    seen = []
    for r in records:
        for w in r.get("warnings") or []:
            if w not in seen:
                seen.append(w)
    return seen


def run_line(rec) -> str:
    """One line per finished run, every score x100 (as in the tables)."""
    t, d = rec["test"], rec.get("dev") or {}
    pct = lambda x: "—" if x is None else f"{100 * x:.2f}"  # noqa: E731
    return (f"{run_label(rec):>9} seed {rec['seed']}: test entity P/R/F1 "
            f"{pct(t['entity_precision'])} / {pct(t['entity_recall'])} / {pct(t['entity_f1'])}, "
            f"token macro P/R/F1 {pct(t['token_macro_precision'])} / "
            f"{pct(t['token_macro_recall'])} / {pct(t['token_macro_f1'])}, dev entity F1 "
            f"{pct(d.get('entity_f1'))} (x100); {rec['train_seconds']:.0f} s")


def run_label(rec) -> str:
    """The run's name, with the MoM normalisation of a MoM run: "mom (paper norm)"."""
    return rec["loss"] + (f" ({rec['mom_norm']} norm)" if rec.get("mom_norm") else "")


def loss_order(records):
    seen = []
    for r in records:
        if r["loss"] not in seen:
            seen.append(r["loss"])
    return seen


def summary_table(records, baseline: str = "ce") -> str:
    rows = [r for r in records if r.get("test")]
    losses = loss_order(rows)
    seeds = sorted({r["seed"] for r in rows})
    has_base = baseline in losses and len(seeds) >= 2
    head = ["loss", "runs", "entity P", "entity R", "entity F1", "token macro P",
            "token macro R", "token macro F1", "dev entity F1", "tokens/s", "train s"]
    if has_base:
        head += [f"p vs {baseline} (entity F1)", f"p vs {baseline} (macro F1)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in losses:
        rs = [r for r in rows if r["loss"] == loss]
        cells = [run_label(rs[0]), str(len(rs))]
        for m in ("entity_precision", "entity_recall", "entity_f1", "token_macro_precision",
                  "token_macro_recall", "token_macro_f1"):
            cells.append(fmt_pct([r["test"][m] for r in rs]))
        cells.append(fmt_pct([r["dev"]["entity_f1"] if r.get("dev") else None for r in rs]))
        tp = mean_std([r["tokens_per_s"] for r in rs])
        ts = mean_std([r["train_seconds"] for r in rs])
        cells += [f"{tp[0]:,.0f} ± {tp[1]:,.0f}", f"{ts[0]:.0f}"]
        if has_base:
            for m in ("entity_f1", "token_macro_f1"):
                p = paired_ttest(rows, m, loss, baseline)
                cells.append("—" if p is None else f"{p:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(records, path):
    cols = ["loss", "seed", "lam", "mom_norm", "gamma", "model", "epochs", "lr", "batch_size",
            "n_train", "train_fraction", "subset_seed", "world_size", "backend", "train_seconds",
            "train_tokens", "tokens_per_s", "loss_seconds", "steps", "max_grad_norm",
            "grad_norm_median", "clipped_fraction"]
    mets = ["entity_precision", "entity_recall", "entity_f1", "token_macro_precision",
            "token_macro_recall", "token_macro_f1", "word_accuracy", "sentence_accuracy"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"test_{m}" for m in mets] + ["dev_entity_f1", "dev_token_macro_f1"])
        for r in records:
            t = r.get("test") or {}
            d = r.get("dev") or {}
            w.writerow([r.get(c) for c in cols] + [t.get(m) for m in mets]
                       + [d.get("entity_f1"), d.get("token_macro_f1")])


def write_plots(records, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("test")]
    losses = loss_order(rows)
    if not losses:
        return
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(losses)) * 1.6, 4))
    for ax, metric, title in ((axes[0], "entity_f1", "test entity F1 (seqeval)"),
                              (axes[1], "token_macro_f1", "test token macro F1")):
        for i, loss in enumerate(losses):
            ys = [r["test"][metric] * 100 for r in rows if r["loss"] == loss]
            m, s = mean_std(ys)
            ax.bar(i, m, yerr=s, color="C%d" % i, alpha=0.6, capsize=4)
            ax.scatter([i + (j - (len(ys) - 1) / 2) * 0.08 for j in range(len(ys))], ys,
                       color="k", s=12, zorder=3)
        lo = min(r["test"][metric] * 100 for r in rows)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_xticks(range(len(losses)),
                      [run_label(next(r for r in rows if r["loss"] == l)) for l in losses],
                      rotation=30, fontsize=8)
        ax.set_title(title + " — mean ± std, dots = seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "f1_per_loss.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, loss in enumerate(losses):
        for j, r in enumerate(r for r in rows if r["loss"] == loss):
            c = np.array(r["loss_curve"]) if r["loss_curve"] else np.zeros((0, 2))
            if len(c):
                ax.plot(c[:, 0], c[:, 1], color="C%d" % i, alpha=0.8,
                        label=run_label(r) if j == 0 else None, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log window)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)


def write_outputs(records, out: Path, header: str = "", baseline: str = "ce") -> str:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(out / "results.json")
    write_csv(records, out / "results.csv")
    table = summary_table(records, baseline)
    warns = warning_lines(records)
    if warns:
        table += "\n\nWarnings:\n" + "\n".join(f"- {w}" for w in warns)
    (out / "summary.md").write_text((header + "\n\n" if header else "") + table + "\n")
    try:
        write_plots(records, out)
    except Exception as e:  # plots are a convenience; never lose results for them
        print(f"warning: plots not written: {e}", file=sys.stderr)
    return table


def load_records(out: Path) -> list:
    p = out / "results.json"
    return json.loads(p.read_text()) if p.is_file() else []
