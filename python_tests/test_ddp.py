"""DistributedDataParallel with the global-mean loss: 2 CPU processes (gloo), the
tiny BERT of examples/train_ner.py, ranks holding DIFFERENT numbers of valid
tokens.  The DDP gradient must equal the single-process gradient of the mean
loss over the concatenated global batch; the naive per-rank mean must not.
The same for the paper's normalisation (--mom-norm paper): D_MoM = sentences
of the *global* batch x M; per-rank sentences x M must not give it."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed not available", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
LAM = 0.3
# case -> (train_ner loss, --mom-norm)
LOSSES = {"mom": ("mom", "valid"), "torch-ce": ("torch-ce", "valid"), "wce2": ("wce2", "valid"),
          "mom-focal": ("mom-focal", "valid"), "mom-paper": ("mom", "paper"),
          "mom-focal-paper": ("mom-focal", "paper")}
SENTENCES = 6  # of the global batch


def _tn():
    if str(ROOT / "examples" / "ner") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples" / "ner"))
    import train
    return train


def _setup():
    """Model, global batch (B, T) and weights, identical in every process."""
    tn = _tn()
    sents = [
        (["John", "lives", "in", "New", "York"], ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
        (["hi"], ["O"]),
        (["Mary", "and", "Bob", "met", "at", "the", "UN", "in", "Paris", "today"],
         ["B-PER", "O", "B-PER", "O", "O", "O", "B-ORG", "O", "B-LOC", "O"]),
        (["ok", "then"], ["O", "O"]),
        (["the", "EU", "said"], ["O", "B-ORG", "O"]),
        (["Rome"], ["B-LOC"]),
    ]
    labels = tn.label_list(sents)
    l2i = {l: i for i, l in enumerate(labels)}
    torch.manual_seed(0)
    model, tok = tn.build_model("tiny", labels, sents)
    model.eval()  # no dropout: the gradients must be deterministic
    enc = tn.encode(tok, sents, l2i)
    ids, mask, lab = tn.collate(enc, tok.pad_token_id)
    w = tn.class_weights(sents, labels, "wce2")
    return tn, model, ids, mask, lab, w


def _loss_fn(tn, case, w, distributed, o_index=0):
    name, norm = LOSSES[case]
    return tn.make_loss_fn(name, o_index=o_index, lam=LAM, gamma=2.0, backend="auto",
                           weight=w if name.startswith("wce") else None, distributed=distributed,
                           mom_norm=norm)


def _rank_rows(rank):
    # rank 0: sentences 0, 2, 4 (many tokens); rank 1: 1, 3, 5 (few)
    return list(range(rank, SENTENCES, WORLD))


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(WORLD))
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        tn, model, ids, mask, lab, w = _setup()
        rows = _rank_rows(rank)
        ids, mask, lab = ids[rows], mask[rows], lab[rows]
        ddp = DDP(model)
        res = {"valid": int((lab != -100).sum())}
        for name in tuple(LOSSES) + ("naive-mom", "naive-paper"):
            ddp.zero_grad(set_to_none=True)
            logits = ddp(input_ids=ids, attention_mask=mask).logits
            if name == "naive-mom":  # per-rank mean: what docs/spec.md's reduction="mean" gives
                import momkernels
                loss = momkernels.mom_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                    lab.reshape(-1), LAM, o_index=0)
            elif name == "naive-paper":  # D_MoM from this rank's sentences only
                loss = _loss_fn(tn, "mom-paper", w, distributed=True)(
                    logits, lab, sentences=len(rows))
            else:  # train_ner passes the global batch's sentence count
                loss = _loss_fn(tn, name, w, distributed=True)(logits, lab, sentences=SENTENCES)
            loss.backward()
            res[name] = [p.grad.clone() for p in model.parameters()]
        if rank == 0:
            torch.save(res, os.path.join(out_dir, "ddp.pt"))
        else:
            torch.save({"valid": res["valid"]}, os.path.join(out_dir, "rank1.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradient_equals_single_process(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    v1 = torch.load(tmp_path / "rank1.pt")["valid"]
    assert ddp["valid"] != v1  # the ranks hold different numbers of valid tokens

    tn, model, ids, mask, lab, w = _setup()
    for name in LOSSES:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        _loss_fn(tn, name, w, distributed=False)(logits, lab).backward()
        ref = [p.grad for p in model.parameters()]
        for g_ddp, g_ref in zip(ddp[name], ref):
            torch.testing.assert_close(g_ddp, g_ref, rtol=1e-4, atol=1e-6, msg=name)

    # the naive per-rank versions give a different gradient, so the test can fail
    for naive, case in (("naive-mom", "mom"), ("naive-paper", "mom-paper")):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        _loss_fn(tn, case, w, distributed=False)(logits, lab).backward()
        ref = [p.grad for p in model.parameters()]
        diff = max(float((a - b).abs().max()) for a, b in zip(ddp[naive], ref))
        scale = max(float(b.abs().max()) for b in ref)
        assert diff > 1e-3 * scale, naive


def test_paper_norm_under_ddp_needs_the_global_sentence_count():
    tn = _tn()
    f = tn.make_loss_fn("mom", o_index=0, lam=LAM, gamma=2.0, backend="auto", weight=None,
                        distributed=True, mom_norm="paper")
    with pytest.raises(ValueError, match="sentences"):
        f(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(SystemExit, match="rows"):
        tn.make_loss_fn("mom", o_index=0, lam=LAM, gamma=2.0, backend="auto", weight=None,
                        distributed=True, mom_norm="rows")


def _main_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(WORLD))
    _tn().main(["--model", "tiny", "--losses", "mom", "--seeds", "0", "--epochs", "1",
                "--max-train", "40", "--max-eval", "16", "--batch-size", "8", "--threads", "1",
                "--device", "cpu", "--out", out_dir, "--quiet"])


def test_train_ner_under_two_processes_paper_norm(tmp_path):
    """examples/train_ner.py's training loop under DDP (as torchrun runs it) with
    the default paper normalisation: every global batch's sentence count reaches
    the loss (a missing count raises), rank 0 writes the record."""
    import json
    import torch.multiprocessing as mp
    mp.spawn(_main_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    rec, = json.loads((tmp_path / "results.json").read_text())
    assert (rec["loss"], rec["world_size"], rec["mom_norm"], rec["mom_norm_M"]) == \
        ("mom", 2, "paper", 128)
    assert rec["steps"] == 5 and all(v > 0 for _, v in rec["loss_curve"])
