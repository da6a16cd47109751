"""The data side of the NER example: reading, the label scheme, the training
subset, tokenisation with label alignment, batching, and checks that the data
suits the tokenizer.

Reading (``--data DIR``): CoNLL-style column files -- one token per line, the
tag in the last column, a blank line (or a line of only whitespace) between
sentences, ``-DOCSTART-`` lines skipped.  train/dev/test are found by common
names (``train.txt``/``dev.txt``/``test.txt``, ``eng.train``/``eng.testa``/
``eng.testb``, ...).  Without ``--data`` the bundled WNUT-17 copy in
``examples/ner/data/wnut17`` is used (CC-BY 4.0, see its README.md), so that
the example runs on a fresh machine without a download.  CoNLL-2003 is not
redistributable: it is only read from a folder the user names.

Label scheme: BIO.  CoNLL-2003 comes in IOB1 (an entity may start with I-X),
WNUT-17 in BIO; both become BIO, the scheme seqeval's default mode scores, in
which every entity starts with B-X.  "O" is label 0 (the MoM losses need its
index).

Alignment: the tag of a word goes on its first sub-word, -100 (ignored by
every loss) on its other sub-words and on the special tokens, so that training
and scoring count words, not sub-words.  Words cut off by --max-length get no
label and are predicted "O" at evaluation.

Training subset: ``--max-train N`` and/or ``--train-fraction f`` (round(f x N),
N = --max-train or the whole training set) draw a random sentence subset with
``--subset-seed`` (default 1234): the same subset for every loss of a run, so
that the losses are compared on the same sentences, and a different one per
subset seed; for one seed the subsets of growing fractions are nested.

Data checks (warnings.warn(NERDataWarning), once per data set, also kept in
each record's "warnings" and "data_checks"): a model trained on text its
tokenizer cannot represent still gets scores, meaningless ones, so the example
says when: more than 2 % of the training words mapped to an unknown token,
more than 2 % of the training characters changed by the tokenizer's
normaliser (pure lower-casing of an uncased model does not count), sentences
of any split cut by --max-length (their cut words are scored as "O").
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from model import build_tokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "wnut17"
# CoNLL-2003 is not redistributable: it is read from a folder the user names
# (--data, or the CONLL2003_DIR environment variable), never from the repository.
CONLL_DATA = os.environ.get("CONLL2003_DIR") or None
SPLIT_NAMES = {
    "train": ["train.txt", "train.conll", "train", "eng.train", "train.tsv", "wnut17train.conll"],
    "dev": ["dev.txt", "valid.txt", "validation.txt", "dev.conll", "valid.conll", "dev",
            "valid", "eng.testa", "dev.tsv", "emerging.dev.conll"],
    "test": ["test.txt", "test.conll", "test", "eng.testb", "test.tsv",
             "emerging.test.annotated", "emerging.test.conll"],
}
# data checks: warn above these fractions (see the module docstring)
UNK_WARN = 0.02        # training words with an unknown sub-word
NORMALIZER_WARN = 0.02  # training characters the normaliser changes (lower-casing aside)


class NERDataWarning(UserWarning):
    """The data does not suit the tokenizer / --max-length (see the module docstring)."""


# ------------------------------------------------------------------ reading, labels, subsets


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


# ------------------------------------------------------------------ tokenisation and checks


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


def dist_info():
    """(world size, rank) as torchrun sets them; (1, 0) in a single process."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return ws, rank


def warn(msg: str, category=NERDataWarning) -> None:
    """Emit one warning (stderr, via the warnings module) on rank 0."""
    if dist_info()[1] == 0:
        warnings.warn(msg, category, stacklevel=2)


# ------------------------------------------------------------------ batches


def collate(items, pad_id: int):
    """(input_ids, attention_mask, labels) of ``items``, each (n, L), L = the
    longest item: padding gets ``pad_id``, mask 0 and label -100 (ignored)."""
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


def collate_inputs(items, pad_id: int):
    """(model inputs, labels) of ``items``: ``collate``'s input_ids and
    attention_mask as keyword arguments of the model, plus token_type_ids
    (padding 0) when the items have them (the (query, sentence) pairs of
    train_mrc.py: segment 0 = [CLS] query [SEP], 1 = sentence [SEP])."""
    ids, mask, lab = collate(items, pad_id)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if all("token_type_ids" in it for it in items):
        tt = torch.zeros_like(ids)
        for i, it in enumerate(items):
            tt[i, :len(it["token_type_ids"])] = torch.tensor(it["token_type_ids"])
        inputs["token_type_ids"] = tt
    return inputs, lab


def bucketed_batches(lengths, batch_size: int, rng: random.Random, chunk_factor: int = 50):
    """Shuffle, sort by length within chunks of chunk_factor*batch_size, cut into
    batches, shuffle the batch order.  Returns lists of indices.  A batch is
    padded only to its longest sentence (collate), so sentences of similar
    length together waste little compute on padding; the shuffles keep the
    batches random."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = chunk_factor * batch_size
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------ one data set


class Sentences:
    """The sentences of one config: ``splits`` (paths), ``train_sents`` (the
    training subset: --max-train / --train-fraction, --subset-seed),
    ``n_train_full``, ``subset_digest`` (names the subset in the records, so runs
    on the same sentences share it), ``dev_sents`` / ``test_sents`` (--max-eval).
    Shared by sequence labelling (Prepared) and MRC (train_mrc.PreparedMRC)."""

    def read_sentences(self, cfg) -> list:
        splits = find_splits(cfg.data)
        self.splits = splits
        train = read_conll(splits["train"])
        self.n_train_full = len(train)
        self.subset_seed = getattr(cfg, "subset_seed", 1234)
        self.train_fraction = getattr(cfg, "train_fraction", 0.0)
        train = train_subset(train, cfg.max_train, self.train_fraction, self.subset_seed)
        self.train_sents = train
        self.subset_digest = hashlib.sha1(
            "\n".join(" ".join(t) for t, _ in train).encode()).hexdigest()[:12]
        self.dev_sents = read_conll(splits["dev"])
        self.test_sents = read_conll(splits["test"])
        if cfg.max_eval:
            self.dev_sents = self.dev_sents[:cfg.max_eval]
            self.test_sents = self.test_sents[:cfg.max_eval]
        return train


class Prepared(Sentences):
    """Data, labels, tokenizer and encodings shared by the runs of one config;
    ``checks`` ({split: counts}) and ``warnings`` (strings, also emitted once as
    NERDataWarning) from :func:`data_checks`."""

    def __init__(self, cfg):
        train = self.read_sentences(cfg)
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
