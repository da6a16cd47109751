"""DistributedDataParallel with the global-mean loss: 2 CPU processes (gloo), a
tiny random BERT token classifier, ranks holding DIFFERENT numbers of valid
tokens.  The DDP gradient must equal the single-process gradient of the mean
loss over the concatenated global batch; the naive per-rank mean must not.
The same for the paper's normalisation: D_MoM = sentences of the *global*
batch x M; per-rank sentences x M must not give it.  (The NER example's
training loop under two processes is tested in test_examples_ner.py.)"""

import os
import socket

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed not available", allow_module_level=True)

import momkernels  # noqa: E402
from momkernels.integrations.distributed import (  # noqa: E402
    global_denominator,
    global_mean_mom_cross_entropy,
)

WORLD = 2
LAM = 0.3
M = 128  # the paper's padded input length: D_MoM = sentences x M
C = 5    # classes, "O" = 0
VOCAB = 40
# words per sentence of the global batch ([CLS] and [SEP] are added)
LENGTHS = [5, 1, 10, 2, 3, 1]
SENTENCES = len(LENGTHS)
# case -> keyword arguments of the loss ("paper": mom_norm = the number sentences x M)
CASES = {
    "torch-ce": {},  # F.cross_entropy (see _loss)
    "mom": dict(lam=LAM),
    "wce": dict(lam=1.0, weighted=True),
    "mom-focal": dict(lam=LAM, loss="focal", gamma=2.0),
    "mom-paper": dict(lam=LAM, mom_norm="paper"),
    "mom-focal-paper": dict(lam=LAM, loss="focal", gamma=2.0, mom_norm="paper"),
}
WEIGHT = torch.linspace(0.5, 2.0, C)


def _setup():
    """Model, global batch (B, T) of ids, mask and labels, identical in every
    process: label -100 on [CLS], [SEP] and padding, a random class elsewhere
    (about half of them "O")."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     num_labels=C)
    model = BertForTokenClassification(cfg)
    model.eval()  # no dropout: the gradients must be deterministic
    g = torch.Generator().manual_seed(1)
    T = max(LENGTHS) + 2
    ids = torch.zeros(SENTENCES, T, dtype=torch.long)
    mask = torch.zeros(SENTENCES, T, dtype=torch.long)
    lab = torch.full((SENTENCES, T), -100, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        ids[i, 0], ids[i, n + 1] = 2, 3  # [CLS], [SEP]
        ids[i, 1:n + 1] = torch.randint(5, VOCAB, (n,), generator=g)
        mask[i, :n + 2] = 1
        y = torch.randint(1, C, (n,), generator=g)
        lab[i, 1:n + 1] = torch.where(torch.rand(n, generator=g) < 0.5, 0, y)
    return model, ids, mask, lab


def _loss(case, logits, lab, *, distributed, sentences=SENTENCES):
    """The loss of ``case``: the global mean under DDP, the plain mean in one
    process (``sentences``: the sentence count of D_MoM = sentences x M)."""
    kw = dict(CASES[case])
    x, y = logits.reshape(-1, C), lab.reshape(-1)
    if case == "torch-ce":  # the recipe for a loss outside momkernels
        if not distributed:
            return F.cross_entropy(x, y)
        s = F.cross_entropy(x, y, reduction="sum")
        return s * (torch.distributed.get_world_size() / global_denominator(lab))
    weight = WEIGHT if kw.pop("weighted", False) else None
    if kw.get("mom_norm") == "paper":
        kw["mom_norm"] = sentences * M
    lam = kw.pop("lam")
    if distributed:
        return global_mean_mom_cross_entropy(x, y, lam, o_index=0, weight=weight, **kw)
    if case == "wce":
        return momkernels.cross_entropy(x, y, weight=weight)
    return momkernels.mom_cross_entropy(x, y, lam, o_index=0, weight=weight, **kw)



def _rank_rows(rank):
    # rank 0: sentences 0, 2, 4 (many tokens); rank 1: 1, 3, 5 (few)
    return list(range(rank, SENTENCES, WORLD))


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(WORLD))
    import torch.distributed as dist
    # before init_process_group, or the group outlives destroy_process_group():
    # examples/ner/train.py's init_distributed says why
    import torch.distributed.nn as _dist_nn  # noqa: F401
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, ids, mask, lab = _setup()
        rows = _rank_rows(rank)
        ids, mask, lab = ids[rows], mask[rows], lab[rows]
        ddp = DDP(model)
        res = {"valid": int((lab != -100).sum())}
        # docs/SEMANTICS.md S11 across ranks: with int32 targets an ignore_index
        # outside int32 matches no row (2**32 must not wrap to class 0)
        every = lab.clamp_min(0).int()  # padding -> class 0: every token is a row
        res["d_int32"] = [float(global_denominator(every, w, ignore_index=2**32))
                          for w in (None, WEIGHT)]
        for name in tuple(CASES) + ("naive-mom", "naive-paper"):
            ddp.zero_grad(set_to_none=True)
            logits = ddp(input_ids=ids, attention_mask=mask).logits
            if name == "naive-mom":  # per-rank mean: what docs/spec.md's reduction="mean" gives
                loss = momkernels.mom_cross_entropy(logits.reshape(-1, C), lab.reshape(-1), LAM,
                                                    o_index=0)
            elif name == "naive-paper":  # D_MoM from this rank's sentences only
                loss = _loss("mom-paper", logits, lab, distributed=True, sentences=len(rows))
            else:  # D_MoM from the global batch's sentence count
                loss = _loss(name, logits, lab, distributed=True)
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

    model, ids, mask, lab = _setup()
    every = lab.clamp_min(0)
    assert ddp["d_int32"][0] == every.numel()
    assert abs(ddp["d_int32"][1] - float(WEIGHT[every].sum())) <= 1e-5 * every.numel()
    for name in CASES:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        _loss(name, logits, lab, distributed=False).backward()
        ref = [p.grad for p in model.parameters()]
        for g_ddp, g_ref in zip(ddp[name], ref):
            torch.testing.assert_close(g_ddp, g_ref, rtol=1e-4, atol=1e-6, msg=name)

    # the naive per-rank versions give a different gradient, so the test can fail
    for naive, case in (("naive-mom", "mom"), ("naive-paper", "mom-paper")):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask).logits
        _loss(case, logits, lab, distributed=False).backward()
        ref = [p.grad for p in model.parameters()]
        diff = max(float((a - b).abs().max()) for a, b in zip(ddp[naive], ref))
        scale = max(float(b.abs().max()) for b in ref)
        assert diff > 1e-3 * scale, naive
