#!/usr/bin/env python
"""NER as machine reading comprehension (MRC) with momkernels' losses: the MoM
paper's second framework (its BERT-MRC, Table 6).

    python examples/ner/train_mrc.py --model tiny --max-train 200 --max-eval 100 --epochs 1
    python examples/ner/train_mrc.py --data path/to/conll2003 --losses ce,focal,dice,mom
    python examples/ner/train_mrc.py --data path/to/conll2003 --ceiling   # decoding ceiling

The paper's BERT-MRC has "the same architecture as sequential labelling with
the label set changed to 2": the input is a natural-language query for one
entity type followed by the sentence, and every sentence word gets a binary
label -- part of an entity of that type (1) or not (0, the majority class,
which plays the role of O: the MoM term is computed on the words whose gold
label is 0).

Conversion (any BIO/IOB1 CoNLL-style data, read by data.py): one (query,
sentence) pair per entity type per sentence, types = the entity types of the
data's labels; the queries are our own short descriptions of the types
(QUERIES; a type without one gets "Find <type> entities." and a warning).
Encoding: the tokenizer's pair encoding ``[CLS] query [SEP] sentence [SEP]``
(token_type_ids 0 / 1), truncating the sentence only; the binary label goes on
each sentence word's first sub-word, -100 on the query, the special tokens
and the other sub-words.  A pair longer than --max-length loses the end of its
sentence (a warning says how many; the cut words are predicted 0 for that
type), and a query that leaves no room for the sentence is refused.

Decoding (decode_pairs): for each type, a maximal run of consecutive words
predicted 1 is one span of that type.  Under binary labels two adjacent
entities of the same type cannot be told apart, so they come back as one span
(the conversion's ceiling: gold BIO -> pairs -> decode -> BIO, --ceiling).
Spans of different types that overlap are resolved deterministically: the
span with the higher mean positive probability (softmax of class 1, averaged
over its words) is kept, ties broken by the earlier start, then the type's
order in the sorted type list; a span that overlaps a kept span is dropped
whole.  The kept spans become one BIO sequence per sentence (B- on a span's
first word, I- on the rest), scored exactly like train.py's output (seqeval
entity P/R/F1, token macro P/R/F1 over the BIO classes, report.scores), so the
two frameworks are compared on the same test sentences.

Losses: every loss of train.py (torch-ce, ce, mom, focal, dice, mom-focal,
mom-dice, wce, wce2) through momkernels with o_index = 0 (label 0 = not an
entity of the query's type); train.py's options, with the paper's MRC
defaults: --lam 0.446 (the paper's lambda for BERT-MRC), --gamma 3 (focal),
--dice-alpha 1 and --dice-delta 0.01 (dice), --mom-norm paper with D_MoM =
(query, sentence) pairs in the batch x --max-length (train.py's paper
normalisation with pairs in place of sentences).  --max-train / --max-eval
count sentences (each gives one pair per type).  The training loop is
train.py's train_one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import train  # noqa: E402
from data import (NERDataWarning, Sentences, class_weights, collate_inputs,  # noqa: E402
                  data_checks, find_splits, label_list, read_conll, warn)
from model import build_tokenizer  # noqa: E402
from report import norm_desc, scores, write_outputs  # noqa: E402

MRC_LABELS = ["O", "ENT"]  # 0 = not an entity of the query's type (the majority), 1 = part of one
PAPER_MRC_LAM = 0.446       # the paper's lambda for BERT-MRC
PAPER_MRC_GAMMA = 3.0       # the paper's focal gamma in the MRC setting

# Our own descriptions of the entity types (in the spirit of BERT-MRC's
# annotation-guideline queries, not copied from them).  CoNLL-2003 and WNUT-17.
QUERIES = {
    "PER": "Find person names: people, including fictional characters, by first name, "
           "family name or both.",
    "LOC": "Find locations: countries, cities, regions, mountains, rivers, seas and other "
           "named places.",
    "ORG": "Find organisations: companies, sports teams, political parties, government "
           "bodies, unions and other institutions.",
    "MISC": "Find other proper names: nationalities, religions, languages, events, titles "
            "of works, products and names that are not of a person, place or organisation.",
    "person": "Find person names: people, including fictional characters and online "
              "user names.",
    "location": "Find locations: countries, cities, buildings, landmarks and other named "
                "places.",
    "corporation": "Find corporations: companies, businesses and brands named as "
                   "organisations.",
    "product": "Find products: consumer goods, software, devices, services and other things "
               "made or sold.",
    "creative-work": "Find creative works: titles of songs, films, books, television shows, "
                     "games and other works.",
    "group": "Find groups: bands, sports teams, political groups, communities and other "
             "named collectives.",
}


def query_for(typ: str) -> str:
    """The query of entity type ``typ`` (QUERIES, else a generic one)."""
    return QUERIES.get(typ) or f"Find {typ} entities."


# ------------------------------------------------------------------ conversion and decoding


def entity_types(labels) -> list[str]:
    """Sorted entity types of a BIO label list (["O", "B-LOC", "I-LOC", ...])."""
    return sorted({l[2:] for l in labels if l != "O"})


def bio_to_binary(tags: list[str], typ: str) -> list[int]:
    """1 for the words of an entity of type ``typ`` (B- or I-), else 0."""
    return [int(t != "O" and t[2:] == typ) for t in tags]


def binary_spans(binary) -> list[tuple[int, int]]:
    """Maximal runs of 1s: [(start, end), ...], end exclusive.  A positive word
    after a positive word continues the span."""
    spans, start = [], None
    for i, b in enumerate(list(binary) + [0]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            spans.append((start, i))
            start = None
    return spans


def decode_pairs(n_words: int, per_type: dict, types: list[str]) -> list[str]:
    """One sentence's BIO tags from its pairs' predictions.

    ``per_type``: {type: (binary predictions, positive probabilities)}, each a
    list of ``n_words`` (probabilities may be None: all 1.0).  The spans of a
    type are its maximal runs of 1s; spans of different types that overlap
    are resolved greedily: in the order (higher mean positive probability,
    earlier start, type earlier in ``types``), a span is kept unless it
    overlaps a kept one (then it is dropped whole).  Deterministic."""
    rank = {t: i for i, t in enumerate(types)}
    cands = []
    for typ, (binary, probs) in per_type.items():
        for s, e in binary_spans(binary):
            p = 1.0 if probs is None else float(np.mean(probs[s:e]))
            cands.append((-p, s, rank.get(typ, len(rank)), typ, e))
    cands.sort(key=lambda c: c[:3])
    tags = ["O"] * n_words
    taken = [False] * n_words
    for _, s, _, typ, e in cands:
        if any(taken[s:e]):
            continue
        for i in range(s, e):
            taken[i] = True
            tags[i] = ("B-" if i == s else "I-") + typ
    return tags


def roundtrip(tags: list[str], types: list[str]) -> list[str]:
    """Gold BIO -> one binary sequence per type -> decode_pairs -> BIO: what the
    MRC framework can represent of ``tags`` (adjacent entities of the same
    type merge)."""
    return decode_pairs(len(tags), {t: (bio_to_binary(tags, t), None) for t in types}, types)


def adjacent_same_type(tags: list[str]) -> int:
    """Entities that start (B-X) right after a word of an entity of the same
    type X: each such boundary is lost under binary labels."""
    return sum(1 for a, b in zip(tags, tags[1:])
               if b.startswith("B-") and a != "O" and a[2:] == b[2:])


def decoding_ceiling(sents, labels=None) -> dict:
    """Scores (report.scores, ×1) of the round trip gold BIO -> pairs -> decode ->
    BIO against gold, and the counts of merged adjacent same-type entities."""
    labels = labels or label_list(sents)
    types = entity_types(labels)
    gold = [tags for _, tags in sents]
    back = [roundtrip(tags, types) for tags in gold]
    sc = scores(gold, back, labels)
    n_ent = sum(t.startswith("B-") for g in gold for t in g)
    adj = sum(adjacent_same_type(g) for g in gold)
    return {"sentences": len(sents), "entities": n_ent, "adjacent_same_type": adj,
            "sentences_with_adjacent": sum(adjacent_same_type(g) > 0 for g in gold),
            "entity_precision": sc["entity_precision"], "entity_recall": sc["entity_recall"],
            "entity_f1": sc["entity_f1"], "token_macro_f1": sc["token_macro_f1"],
            "exact_sentences": sum(g == b for g, b in zip(gold, back))}


# ------------------------------------------------------------------ encoding


def encode_pairs(tokenizer, sents, types, queries, max_length: int = 128) -> list[dict]:
    """The (query, sentence) pairs of ``sents``, sentence-major (all types of
    sentence 0, then sentence 1, ...).  Each item: input_ids, token_type_ids,
    labels (binary on the sentence words' first sub-words, -100 elsewhere),
    first (sub-word position of each sentence word, -1 if none or cut), sent
    (index in ``sents``), type, tags (the sentence's gold BIO), n_words, cut
    (sentence words cut by max_length), unk (sentence words with an unknown
    sub-word), query_len (sub-words of the query)."""
    unk_id = tokenizer.unk_token_id
    q_words = {t: queries[t].split() for t in types}
    q_len = {t: len(tokenizer(q_words[t], is_split_into_words=True,
                              add_special_tokens=False)["input_ids"]) for t in types}
    for t in types:
        if q_len[t] + 3 >= max_length:  # [CLS] q [SEP] at least one word [SEP]
            raise SystemExit(f"the query of {t!r} has {q_len[t]} sub-words: no room for the "
                             f"sentence within --max-length {max_length}")
    per_type = {}
    B = 256
    for t in types:
        items = []
        for start in range(0, len(sents), B):
            chunk = sents[start:start + B]
            enc = tokenizer([q_words[t]] * len(chunk), [w for w, _ in chunk],
                            is_split_into_words=True, truncation="only_second",
                            max_length=max_length)
            for i, (toks, tags) in enumerate(chunk):
                wids, sids = enc.word_ids(i), enc.sequence_ids(i)
                ids = list(enc["input_ids"][i])
                # segment ids from the encoding itself (a tokenizer may not return them)
                tt = list(enc.encodings[i].type_ids)
                binary = bio_to_binary(tags, t)
                labels = [-100] * len(ids)
                first = [-1] * len(toks)
                unk = set()
                prev = None
                for pos, (w, sq) in enumerate(zip(wids, sids)):
                    if sq != 1:
                        prev = None
                        continue
                    if w is not None and w != prev:
                        labels[pos] = binary[w]
                        first[w] = pos
                    if w is not None and unk_id is not None and ids[pos] == unk_id:
                        unk.add(w)
                    prev = w
                last = max((w for w, sq in zip(wids, sids) if sq == 1 and w is not None),
                           default=-1)
                cut = len(toks) - 1 - last if len(ids) >= max_length else 0
                items.append({"input_ids": ids, "token_type_ids": tt, "labels": labels,
                              "first": first, "sent": start + i, "type": t, "tags": tags,
                              "n_words": len(toks), "cut": cut, "unk": sorted(unk),
                              "query_len": q_len[t]})
        per_type[t] = items
    return [per_type[t][i] for i in range(len(sents)) for t in types]


def mrc_checks(tokenizer, sents, items, split: str, max_length: int) -> tuple[dict, list]:
    """data.data_checks on the sentences (unknown tokens and the normaliser, as
    train.py) plus the pairs cut by --max-length with their query."""
    first_type = [it for it in items if it["type"] == items[0]["type"]] if items else []
    c, warns = data_checks(tokenizer, sents, [{**it, "cut": 0} for it in first_type], split,
                           max_length)
    cut = [it for it in items if it["cut"] > 0]
    c.update(pairs=len(items), truncated_pairs=len(cut),
             truncated_words=sum(it["cut"] for it in cut),
             truncated_sentences=len({it["sent"] for it in cut}))
    if cut:
        ql = max(it["query_len"] for it in items)
        warns.append(f"{split}: {len(cut)} of {len(items)} (query, sentence) pairs "
                     f"({c['truncated_sentences']} sentences) are longer than --max-length "
                     f"{max_length} sub-words with their query (queries up to {ql} sub-words); "
                     f"their last {c['truncated_words']} words are cut (not trained on, "
                     "predicted not of that type at evaluation)")
    return c, warns


# ------------------------------------------------------------------ one data set


class PreparedMRC(Sentences):
    """The (query, sentence) pairs of one config, with the fields train.train_one
    reads (train/dev/test items, labels, o_index, pad_id, tokenizer, weights,
    checks, warnings, subset fields) and ``evaluate`` (decoded BIO scores).
    ``labels`` are the model's two classes; ``bio_labels`` the data's BIO
    labels, over which the decoded predictions are scored."""

    def __init__(self, cfg):
        train = self.read_sentences(cfg)
        splits = self.splits
        max_dev = getattr(cfg, "max_dev", None)
        if max_dev:  # the dev score costs a pass over 4 pairs per sentence: a smaller dev
            self.dev_sents = read_conll(splits["dev"])[:max_dev]
        self.bio_labels = label_list(train + self.dev_sents + self.test_sents)
        self.types = entity_types(self.bio_labels)
        self.queries = {t: query_for(t) for t in self.types}
        self.labels = list(MRC_LABELS)
        self.label2id = {l: i for i, l in enumerate(self.labels)}
        self.o_index = 0
        self.max_length = cfg.max_length
        # tiny's word-level vocabulary must hold the query words too
        self.tokenizer = build_tokenizer(
            cfg.model, train + [(q.split(), ["O"] * len(q.split()))
                                for q in self.queries.values()])
        self.pad_id = self.tokenizer.pad_token_id
        self.train = encode_pairs(self.tokenizer, train, self.types, self.queries, cfg.max_length)
        self.dev = encode_pairs(self.tokenizer, self.dev_sents, self.types, self.queries,
                                cfg.max_length)
        self.test = encode_pairs(self.tokenizer, self.test_sents, self.types, self.queries,
                                 cfg.max_length)
        self.checks, self.warnings = {}, []
        generic = [t for t in self.types if t not in QUERIES]
        if generic:
            self.warnings.append(f"no query written for the type(s) {', '.join(generic)}: "
                                 "using 'Find <type> entities.' (train_mrc.QUERIES)")
        for split, sents, items in (("train", train, self.train),
                                    ("dev", self.dev_sents, self.dev),
                                    ("test", self.test_sents, self.test)):
            self.checks[split], w = mrc_checks(self.tokenizer, sents, items, split,
                                               cfg.max_length)
            self.warnings += w
        for w in self.warnings:
            warn(f"{cfg.data}: {w}", NERDataWarning)
        # class weights of the binary labels, counted over the training pairs' words
        pair_tags = [(it["tags"], ["ENT" if b else "O" for b in bio_to_binary(it["tags"],
                                                                              it["type"])])
                     for it in self.train]
        self.weights = {k: class_weights(pair_tags, self.labels, k, cfg.wce2_beta)
                        for k in ("wce", "wce2")}

    @torch.no_grad()
    def predict(self, model, items, device, batch_size: int = 64) -> list[list[str]]:
        """Decoded BIO tags of the sentences of ``items`` (one list per sentence,
        in sentence order): per pair, word-level argmax and softmax probability
        of class 1 at each word's first sub-word (cut words: 0), then
        decode_pairs per sentence."""
        was_training = model.training
        model.eval()
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
        pred = [None] * len(items)
        for s in range(0, len(order), batch_size):
            bidx = order[s:s + batch_size]
            inputs, _ = collate_inputs([items[i] for i in bidx], self.pad_id)
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
            prob = torch.softmax(logits.float(), -1)[..., 1].cpu().numpy()
            am = logits.argmax(-1).cpu().numpy()
            for row, i in enumerate(bidx):
                f = items[i]["first"]
                pred[i] = ([int(am[row, p]) if p >= 0 else 0 for p in f],
                           [float(prob[row, p]) if p >= 0 else 0.0 for p in f])
        model.train(was_training)
        by_sent: dict = {}
        for it, pr in zip(items, pred):
            by_sent.setdefault(it["sent"], (it["n_words"], {}))[1][it["type"]] = pr
        return [decode_pairs(n, per, self.types) for _, (n, per) in sorted(by_sent.items())]

    def evaluate(self, model, items, device) -> dict:
        """report.scores of the decoded BIO sentences of ``items`` against gold,
        over the data's BIO labels: comparable with train.py's scores."""
        preds = self.predict(model, items, device)
        gold = {}
        for it in items:
            gold.setdefault(it["sent"], it["tags"])
        return scores([gold[k] for k in sorted(gold)], preds, self.bio_labels)


# ------------------------------------------------------------------ options, runs, main


def parser():
    """train.py's options with the paper's MRC defaults, plus --dice-alpha,
    --dice-delta, --max-dev and --ceiling."""
    p = train.parser()
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--dice-alpha", type=float, default=1.0, help="dice loss alpha (paper: 1)")
    p.add_argument("--dice-delta", type=float, default=0.01, help="dice loss delta (paper: 0.01)")
    p.add_argument("--max-dev", type=int, default=None,
                   help="use the first N dev sentences (default: --max-eval); the test set "
                        "stays --max-eval's")
    p.add_argument("--ceiling", action="store_true",
                   help="print the decoding ceiling (gold BIO -> pairs -> decode -> BIO) of the "
                        "data's splits and exit")
    p.set_defaults(lam=PAPER_MRC_LAM, gamma=PAPER_MRC_GAMMA, out="runs/ner_mrc",
                   losses="ce,mom")
    for a in p._actions:  # the help of the changed defaults
        if a.dest == "lam":
            a.help = f"MoM lambda (paper, BERT-MRC: {PAPER_MRC_LAM})"
        elif a.dest == "gamma":
            a.help = f"focal gamma (paper, MRC: {PAPER_MRC_GAMMA:g})"
        elif a.dest == "mom_norm":
            a.help = ("MoM term's denominator: 'paper' (default) = (query, sentence) pairs in "
                      "the batch x --max-length; 'valid' = labelled words; 'rows'")
        elif a.dest == "max_train":
            a.help = "use a random subset of N sentences (each gives one pair per type)"
    return p


def train_one(cfg, loss_name: str, seed: int, prep: PreparedMRC, **kw) -> dict:
    """train.train_one on the pairs, the record completed with the MRC fields
    (task, types, queries, sentence counts, pairs/s, dice options)."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec = train.train_one(cfg, loss_name, seed, prep, **kw)
    if not rec:
        return rec
    rec.update({
        # model building and the dev/test evaluation (the run's time outside training)
        "other_seconds": time.perf_counter() - t0 - rec["train_seconds"],
        # CPU time of this process over the whole run (on a shared machine a steadier
        # measure of the work than the wall clock)
        "cpu_seconds": time.process_time() - c0,
        "task": "mrc", "types": prep.types, "queries": prep.queries, "bio_labels": prep.bio_labels,
        "n_train_pairs": len(prep.train), "n_train_sentences": len(prep.train_sents),
        "n_dev_sentences": len(prep.dev_sents), "n_test_sentences": len(prep.test_sents),
        "pairs_per_s": (len(prep.train) * rec["epochs"] / rec["train_seconds"]
                        if rec["train_seconds"] > 0 else None),
        "dice_alpha": cfg.dice_alpha if "dice" in loss_name else None,
        "dice_delta": cfg.dice_delta if "dice" in loss_name else None,
    })
    return rec


def mrc_norm_desc(mom_norm: str, max_length: int = 128) -> str:
    """report.norm_desc with pairs in place of sentences."""
    if mom_norm == "paper":
        return f"mom_norm paper (D_MoM = (query, sentence) pairs x {max_length}, the paper's)"
    return norm_desc(mom_norm, max_length)


def print_ceiling(cfg) -> dict:
    out = {}
    splits = find_splits(cfg.data)
    for split in ("train", "dev", "test"):
        sents = read_conll(splits[split])
        c = decoding_ceiling(sents)
        out[split] = c
        print(f"{split}: {c['sentences']} sentences, {c['entities']} entities, "
              f"{c['adjacent_same_type']} start right after an entity of the same type "
              f"({c['sentences_with_adjacent']} sentences) and merge; round trip "
              f"entity P/R/F1 {100 * c['entity_precision']:.2f} / "
              f"{100 * c['entity_recall']:.2f} / {100 * c['entity_f1']:.2f}, token macro F1 "
              f"{100 * c['token_macro_f1']:.2f}, sentences unchanged "
              f"{c['exact_sentences']} of {c['sentences']}", flush=True)
    return out


def main(argv=None) -> list:
    cfg = train.finalize_config(parser().parse_args(argv))
    if cfg.ceiling:
        print_ceiling(cfg)
        return []
    ws, rank = train.init_distributed(cfg)
    out = Path(cfg.out)
    t_start = time.perf_counter()
    records = train.resumed_records(cfg, out, ws, rank)
    prep = PreparedMRC(cfg)
    if rank == 0:
        print(f"MRC on {cfg.data}: train {len(prep.train_sents)} (of {prep.n_train_full}) / dev "
              f"{len(prep.dev_sents)} / test {len(prep.test_sents)} sentences x "
              f"{len(prep.types)} types ({', '.join(prep.types)}) = {len(prep.train)} / "
              f"{len(prep.dev)} / {len(prep.test)} pairs; model {cfg.model}; losses "
              f"{','.join(cfg.loss_list)}; seeds {cfg.seed_list}; {cfg.epochs} epochs; device "
              f"{cfg.device}, {torch.get_num_threads()} threads", flush=True)
    train.run_grid(cfg, prep, train_one, records, out, rank,
                   speed=lambda rec: f"{rec['pairs_per_s'] or 0:,.1f} pairs/s")
    if rank == 0:
        header = (f"MRC: {cfg.model} on {cfg.data} ({len(prep.train_sents)} train sentences = "
                  f"{len(prep.train)} pairs, {cfg.epochs} epochs, seeds {cfg.seed_list}); MoM: "
                  f"λ = {cfg.lam}, {mrc_norm_desc(cfg.mom_norm, cfg.max_length)}; focal "
                  f"γ = {cfg.gamma:g}; dice α = {cfg.dice_alpha:g}, "
                  f"δ = {cfg.dice_delta:g}; test split decoded to BIO, mean ± std over seeds "
                  f"(×100); wall {time.perf_counter() - t_start:.0f} s")
        table = write_outputs(records, out, header)
        print("\n" + header + "\n" + table, flush=True)
    if ws > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return records


if __name__ == "__main__":
    main()
