"""examples/ner/train_mrc.py: NER as machine reading comprehension (the MoM
paper's BERT-MRC framework) -- the BIO <-> (query, sentence) pairs conversion
and its decoding, the label alignment of the pair encoding, the loss through
the example against momkernels, one end-to-end run with the tiny model, and
reproduce_paper.py's MRC part."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("seqeval")
pytest.importorskip("tokenizers")

from helpers import WNUT17
from helpers import ner_example as _example


@pytest.fixture(scope="module")
def mrc():
    return _example("train_mrc")


TYPES = ["LOC", "ORG", "PER"]


def test_roundtrip_two_types_adjacent_entities(mrc):
    """Two types, entities of different types side by side: BIO -> pairs ->
    spans -> BIO is exact."""
    toks = ["John", "Smith", "Google", "Paris", "met", "Mary", "in", "New", "York"]
    tags = ["B-PER", "I-PER", "B-ORG", "B-LOC", "O", "B-PER", "O", "B-LOC", "I-LOC"]
    assert mrc.bio_to_binary(tags, "PER") == [1, 1, 0, 0, 0, 1, 0, 0, 0]
    assert mrc.binary_spans(mrc.bio_to_binary(tags, "LOC")) == [(3, 4), (7, 9)]
    assert mrc.roundtrip(tags, TYPES) == tags
    assert mrc.adjacent_same_type(tags) == 0
    c = mrc.decoding_ceiling([(toks, tags)])
    assert c["entity_f1"] == 1.0 and c["entities"] == 5 and c["adjacent_same_type"] == 0


def test_adjacent_same_type_entities_merge(mrc):
    """Binary labels cannot separate two adjacent entities of one type: they
    come back as one span (the decoding's ceiling counts these)."""
    tags = ["B-PER", "B-PER", "I-PER", "O", "B-LOC"]
    assert mrc.adjacent_same_type(tags) == 1
    assert mrc.roundtrip(tags, TYPES) == ["B-PER", "I-PER", "I-PER", "O", "B-LOC"]
    c = mrc.decoding_ceiling([(list("abcde"), tags)])
    assert c["adjacent_same_type"] == 1 and c["exact_sentences"] == 0
    # gold 3 entities, decoded 2, 1 right (LOC): P 1/2, R 1/3
    assert c["entity_precision"] == pytest.approx(0.5)
    assert c["entity_recall"] == pytest.approx(1 / 3)


def test_overlaps_of_types_keep_the_more_probable_span(mrc):
    per = ([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.1])   # mean 0.8
    loc = ([0, 1, 1, 1], [0.2, 0.95, 0.9, 0.85])  # mean 0.9 -> kept; PER overlaps -> dropped
    org = ([1, 0, 0, 0], [0.6, 0.0, 0.0, 0.0])   # does not overlap LOC -> kept
    got = mrc.decode_pairs(4, {"PER": per, "LOC": loc, "ORG": org}, TYPES)
    assert got == ["B-ORG", "B-LOC", "I-LOC", "I-LOC"]
    # ties: the earlier start, then the type earlier in the sorted list
    tie = {"PER": ([1, 1, 0], [0.5, 0.5, 0]), "LOC": ([0, 1, 1], [0, 0.5, 0.5])}
    assert mrc.decode_pairs(3, tie, TYPES) == ["B-PER", "I-PER", "O"]
    same = {"PER": ([1, 1], [0.5, 0.5]), "LOC": ([1, 1], [0.5, 0.5])}
    assert mrc.decode_pairs(2, same, TYPES) == ["B-LOC", "I-LOC"]


def _wordpiece(tmp_path):
    """A small WordPiece BERT tokenizer that splits words into sub-words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "find", "person", "names", ":",
             "john", "smith", "lives", "in", "new", "york", "wash", "##ing", "##ton", "."]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def test_pair_encoding_labels_first_subwords_only(mrc, tmp_path):
    tok = _wordpiece(tmp_path)
    sents = [(["John", "Washington", "lives", "in", "New", "York"],
              ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"])]
    queries = {"PER": "find person names:", "LOC": "find person names."}
    items = mrc.encode_pairs(tok, sents, ["LOC", "PER"], queries, max_length=64)
    assert [(it["type"], it["sent"]) for it in items] == [("LOC", 0), ("PER", 0)]
    per = items[1]
    toks = tok.convert_ids_to_tokens(per["input_ids"])
    assert toks == ["[CLS]", "find", "person", "names", ":", "[SEP]", "john", "wash", "##ing",
                    "##ton", "lives", "in", "new", "york", "[SEP]"]
    assert per["token_type_ids"] == [0] * 6 + [1] * 9
    # 1 on the first sub-word of John and Washington, 0 on the other words' first
    # sub-words, -100 on the query, the special tokens and the continuation sub-words
    assert per["labels"] == [-100] * 6 + [1, 1, -100, -100, 0, 0, 0, 0, -100]
    assert per["first"] == [6, 7, 10, 11, 12, 13] and per["cut"] == 0
    assert items[0]["labels"] == [-100] * 6 + [0, 0, -100, -100, 0, 0, 1, 1, -100]
    # truncation cuts the sentence, never the query; a cut word gets first = -1
    short = mrc.encode_pairs(tok, sents, ["PER"], queries, max_length=12)[0]
    assert len(short["input_ids"]) == 12 and short["input_ids"][:6] == per["input_ids"][:6]
    assert short["first"] == [6, 7, 10, -1, -1, -1] and short["cut"] == 3
    c, w = mrc.mrc_checks(tok, sents, [short], "test", 12)
    assert c["truncated_pairs"] == 1 and c["truncated_words"] == 3
    assert any("(query, sentence) pairs" in x for x in w)
    with pytest.raises(SystemExit, match="no room"):
        mrc.encode_pairs(tok, sents, ["PER"], queries, max_length=7)


def test_loss_through_the_example_is_momkernels_with_paper_norm(mrc):
    """The MRC run's loss (train.train_one's loss function with the MRC
    defaults) equals momkernels.mom_cross_entropy(o_index=0, lam=0.446,
    mom_norm=pairs x max_length) on the same logits and binary labels."""
    import momkernels
    losses = _example("losses")
    cfg = mrc.parser().parse_args([])
    assert (cfg.lam, cfg.gamma, cfg.dice_alpha, cfg.dice_delta, cfg.mom_norm) == \
        (0.446, 3.0, 1.0, 0.01, "paper")
    torch.manual_seed(0)
    B, T = 6, 11
    logits = torch.randn(B, T, 2, requires_grad=True)
    lab = (torch.rand(B, T) < 0.2).long()
    lab[:, :4] = -100  # the query and [CLS]
    for name, ref_kw in (("mom", dict(lam=0.446, loss="ce")),
                         ("mom-focal", dict(lam=0.446, loss="focal", gamma=3.0)),
                         ("dice", dict(lam=1.0, loss="dice", dice_alpha=1.0, dice_smooth=0.01))):
        f = losses.make_loss_fn(name, o_index=0, lam=cfg.lam, gamma=cfg.gamma, backend="auto",
                                weight=None, distributed=False, mom_norm=cfg.mom_norm,
                                max_length=cfg.max_length, dice_alpha=cfg.dice_alpha,
                                dice_smooth=cfg.dice_delta)
        got = f(logits, lab, sentences=B)
        kw = dict(ref_kw)
        lam = kw.pop("lam")
        ref = momkernels.mom_cross_entropy(logits.reshape(-1, 2), lab.reshape(-1), lam,
                                           o_index=0, mom_norm=B * 128, **kw)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7, msg=name)
    # dice's delta reaches the loss (the test can fail)
    g = losses.make_loss_fn("dice", o_index=0, lam=1.0, gamma=3.0, backend="auto", weight=None,
                            distributed=False, dice_smooth=0.5)
    assert not torch.allclose(g(logits, lab), ref)


def test_mrc_end_to_end_tiny(mrc, tmp_path):
    """A few steps with the tiny model on a handful of WNUT-17 sentences: pairs
    per type, the record's MRC fields, the decoded scores over the BIO labels."""
    out = tmp_path / "mrc"
    recs = mrc.main(["--model", "tiny", "--max-train", "12", "--max-eval", "6", "--seeds", "0",
                     "--epochs", "1", "--batch-size", "16", "--losses", "mom", "--threads",
                     "1", "--out", str(out), "--quiet"])
    r, = recs
    # the types of the labels of this subset and the first 6 dev/test sentences
    assert r["task"] == "mrc" and r["labels"] == ["O", "ENT"] and len(r["types"]) == 5
    n = 12 * len(r["types"])
    assert r["n_train_sentences"] == 12 and r["n_train_pairs"] == r["n_train"] == n
    assert r["steps"] == -(-n // 16) and r["mom_norm"] == "paper" and r["lam"] == 0.446
    assert r["n_test_sentences"] == 6 and set(r["queries"]) == set(r["types"])
    # scored on the decoded BIO sentences, with the data's BIO classes
    assert r["bio_labels"][0] == "O" and {l[2:] for l in r["bio_labels"][1:]} == set(r["types"])
    assert 0.0 <= r["test"]["entity_f1"] <= 1.0 and r["test"]["gold_entities"] > 0
    assert r["pairs_per_s"] > 0 and r["other_seconds"] >= 0
    assert (out / "summary.md").read_text().count("| mom (paper norm) |") == 1
    prep = mrc.PreparedMRC(mrc.train.finalize_config(mrc.parser().parse_args(
        ["--model", "tiny", "--max-train", "12", "--max-eval", "6"])))
    # the tiny vocabulary holds the query words: no unknown token in a query
    unk = prep.tokenizer.unk_token_id
    it = prep.train[0]
    assert unk not in [i for i, t in zip(it["input_ids"], it["token_type_ids"]) if t == 0]
    assert len(prep.train) == n and {it["type"] for it in prep.train} == set(prep.types)


@pytest.fixture(scope="module")
def rp():
    return _example("reproduce_paper")


def test_reproduce_paper_mrc_part_tiny(rp, tmp_path):
    """--parts mrc with the tiny model: the MRC losses with the paper's MRC
    settings, lambda tuning, the page's MRC table beside the sequence-labelling
    one (p vs FL and DL), the decoding ceiling in meta.json."""
    pytest.importorskip("optuna")
    out, doc = tmp_path / "paper", tmp_path / "paper.md"
    common = ["--data", str(WNUT17), "--model", "tiny", "--epochs", "1", "--max-train", "16",
              "--max-eval", "6", "--batch-size", "32", "--threads", "1", "--out", str(out),
              "--doc", str(doc), "--quiet"]
    rp.main(common + ["--parts", "main", "--losses", "ce", "--seeds", "0,1"])
    recs = rp.main(common + ["--parts", "mrc", "--mrc-losses", "ce,focal,dice,mom,mom-tuned",
                             "--seeds", "0,1", "--mrc-max-train", "8", "--optuna-trials", "1",
                             "--mrc-tune-max-train", "8", "--mrc-max-dev", "4", "--resume"])
    mrc = {(r["loss"], r["seed"]): r for r in recs if r.get("part") == "mrc"}
    assert set(mrc) == {(f"mrc-{l}", s) for l in ("ce", "focal", "dice", "mom", "mom-tuned")
                        for s in (0, 1)}
    r = mrc[("mrc-focal", 0)]
    assert (r["gamma"], r["task"], r["n_train_sentences"], r["base_loss"]) == \
        (3.0, "mrc", 8, "focal")
    assert (mrc[("mrc-dice", 0)]["dice_alpha"], mrc[("mrc-dice", 0)]["dice_delta"]) == (1.0, 0.01)
    assert mrc[("mrc-mom", 0)]["lam"] == 0.446 and mrc[("mrc-mom", 0)]["mom_norm"] == "paper"
    assert json.loads((out / "tuning_mrc.json").read_text())["task"] == "mrc"
    meta = json.loads((out / "meta.json").read_text())
    # the sequence-labelling scale is the main command's, the MRC one its own
    assert meta["n_train"] == 16 and meta["mrc"]["n_train_sentences"] == 8
    assert meta["mrc"]["ceiling"]["split"] == "test"
    # a smaller dev set (--mrc-max-dev), the test set of --max-eval
    assert (meta["mrc"]["n_dev_sentences"], meta["mrc"]["n_test_sentences"]) == (4, 6)
    assert r["n_dev_sentences"] == 4 and r["n_dev"] == 4 * len(r["types"])
    assert meta["parts"] == ["main", "mrc"]
    page = doc.read_text()
    for s in ("## MRC: the paper's BERT-MRC framework (its Table 6)", "| FL (γ = 3) | 2 |",
              "| DL (α = 1, δ = 0.01) | 2 |", "| MoM (λ = 0.446, paper norm) | 2 |",
              "p vs FL (entity F1) | p vs DL (entity F1)", "| MoM (λ tuned = ",
              "Decoding ceiling (test split", "entity F1 SL | entity F1 MRC",
              "significantly better than FL and DL", "λ tuning (MRC)", "| 2 / 2 | 6 / 6 |"):
        assert s in page, s
    assert "Not run yet: part mrc" not in page
    # the sequence-labelling table does not mix in the MRC runs
    t3 = page.split("## Table 3")[1].split("## Table 5")[0]
    assert "| CE | 2 |" in t3 and "γ = 3" not in t3 and "0.446" not in t3
    # a further seed trained in a folder of its own is merged in (--merge)
    other = tmp_path / "other"
    mrc_args = ["--parts", "mrc", "--mrc-losses", "ce", "--mrc-max-train", "8",
                "--mrc-max-dev", "4"]
    rp.main([a if a != str(out) else str(other) for a in common] + mrc_args + ["--seeds", "2"])
    merged = rp.main(["--out", str(out), "--doc", str(doc), "--merge", str(other)])
    assert len(merged) == len(recs) + 1 and ("mrc-ce", 2) in {(r["loss"], r["seed"]) for r in merged}
    assert json.loads((out / "meta.json").read_text())["mrc"]["seeds"] == [0, 1, 2]
    assert "| CE | 3 |" in doc.read_text().split("## MRC")[1]
    # ... but not one of other MRC settings
    rp.main([a if a != str(out) else str(other) for a in common] + mrc_args
            + ["--seeds", "3", "--mrc-lam", "0.3", "--resume"])
    with pytest.raises(SystemExit, match="part-mrc settings differ"):
        rp.main(["--out", str(out), "--doc", str(doc), "--merge", str(other)])


def test_collate_inputs_token_type_ids_only_for_pairs():
    data = _example("data")
    seq = [{"input_ids": [2, 5, 3], "labels": [-100, 1, -100]},
           {"input_ids": [2, 3], "labels": [-100, -100]}]
    inputs, lab = data.collate_inputs(seq, 0)
    assert set(inputs) == {"input_ids", "attention_mask"}  # train.py's batches, as before
    ids, mask, lab0 = data.collate(seq, 0)
    assert torch.equal(inputs["input_ids"], ids) and torch.equal(lab, lab0)
    pairs = [{**seq[0], "token_type_ids": [0, 1, 1]}, {**seq[1], "token_type_ids": [0, 0]}]
    inputs, _ = data.collate_inputs(pairs, 0)
    assert inputs["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]


def test_loss_share_tiny(capsys):
    """examples/ner/loss_share.py on the tiny model: one batch per framework,
    with the frameworks' class counts and lambdas, and a loss that is a
    positive part of the step for both backends."""
    share = _example("loss_share")
    rows = share.main(["--model", "tiny", "--batches", "1", "--max-train", "64",
                       "--threads", "1"])
    got = {name: (lam, m) for name, lam, m in rows}
    assert set(got) == {"sequence labelling", "MRC"}
    assert got["MRC"][0] == pytest.approx(0.446) and got["MRC"][1]["C"] == 2
    assert got["sequence labelling"][0] == pytest.approx(0.175)
    assert got["sequence labelling"][1]["C"] > 2
    for _, m in got.values():
        for backend in ("cpp", "torch"):
            assert 0 < m[f"loss {backend}"] < m[f"step {backend}"]
    out = capsys.readouterr().out
    assert "| MRC | 2 | 0.446 |" in out
