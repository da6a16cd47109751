"""DistributedDataParallel with the global-mean loss: 2 CPU processes (gloo), the
tiny BERT of examples/train_ner.py, ranks holding DIFFERENT numbers of valid
tokens.  The DDP gradient must equal the single-process gradient of the mean
loss over the concatenated global batch; the naive per-rank mean must not."""

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
# name -> kwargs of train_ner.make_loss_fn
LOSSES = ("mom", "torch-ce", "wce2", "mom-focal")


def _tn():
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))
    import train_ner
    return train_ner


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


def _loss_fn(tn, name, w, distributed, o_index=0):
    return tn.make_loss_fn(name, o_index=o_index, lam=LAM, gamma=2.0, backend="auto",
                           weight=w if name.startswith("wce") else None, distributed=distributed)


def _rank_rows(rank):
    # rank 0: sentences 0, 2, 4 (many tokens); rank 1: 1, 3, 5 (few)
    return list(range(rank, 6, WORLD))


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
        for name in LOSSES + ("naive-mom",):
            ddp.zero_grad(set_to_none=True)
            logits = ddp(input_ids=ids, attention_mask=mask).logits
            if name == "naive-mom":  # per-rank mean: what SPEC's reduction="mean" gives
                import momkernels
                loss = momkernels.mom_cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                    lab.reshape(-1), LAM, o_index=0)
            else:
                loss = _loss_fn(tn, name, w, distributed=True)(logits, lab)
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

    # the naive per-rank mean gives a different gradient, so the test can fail
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    _loss_fn(tn, "mom", w, distributed=False)(logits, lab).backward()
    ref = [p.grad for p in model.parameters()]
    diff = max(float((a - b).abs().max()) for a, b in zip(ddp["naive-mom"], ref))
    scale = max(float(b.abs().max()) for b in ref)
    assert diff > 1e-3 * scale
