"""momkernels.integrations: transformers Trainer compute_loss_func, use_mom_loss on
a *ForTokenClassification model, and the global-mean DDP loss with one process."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import momkernels  # noqa: E402
from momkernels.integrations.distributed import (  # noqa: E402
    global_denominator,
    global_mean_mom_cross_entropy,
)
from momkernels.integrations.transformers import (  # noqa: E402
    mom_compute_loss_func,
    use_mom_loss,
)

C = 5
LAM = 0.175


def tiny_model(seed=0):
    from transformers import BertConfig, BertForTokenClassification
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=C, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0,
                     id2label={i: l for i, l in enumerate(["B-A", "O", "I-A", "B-B", "I-B"])},
                     label2id={l: i for i, l in enumerate(["B-A", "O", "I-A", "B-B", "I-B"])})
    return BertForTokenClassification(cfg).eval()


def batch(seed=1, B=3, T=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    labels = torch.randint(0, C, (B, T), generator=g)
    labels[:, 0] = -100
    labels[1, 6:] = -100
    labels[2, 3] = -100
    labels[0, 1:4] = 1  # plenty of O (= 1 here)
    return ids, mask, labels


def direct(model, ids, mask, labels, reduction="mean", **kw):
    logits = model(input_ids=ids, attention_mask=mask).logits
    return momkernels.mom_cross_entropy(logits.reshape(-1, C), labels.reshape(-1), LAM,
                                        o_index=1, reduction=reduction, **kw)


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same(model_a, loss_a, model_b, loss_b):
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    for ga, gb in zip(grads(model_a, loss_a), grads(model_b, loss_b)):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)


def paper(model, ids, mask, labels, M=128, **kw):
    """The paper's normalisation by hand: MoM term over B x M."""
    return direct(model, ids, mask, labels, mom_norm=labels.shape[0] * M, **kw)


def test_compute_loss_func_mean_and_num_items():
    """mom_norm="valid": the per-batch mean, or the sum / num_items_in_batch."""
    m = tiny_model()
    ids, mask, labels = batch()
    f = mom_compute_loss_func(lam=LAM, o_index=1, mom_norm="valid")
    out = m(input_ids=ids, attention_mask=mask)
    assert_same(m, f(out, labels), m, direct(m, ids, mask, labels))
    n = torch.tensor(37)  # the Trainer's token count over accumulated micro-batches
    out = m(input_ids=ids, attention_mask=mask)
    assert_same(m, f(out, labels, num_items_in_batch=n),
                m, direct(m, ids, mask, labels, reduction="sum") / 37)
    # extra kwargs reach mom_cross_entropy
    ff = mom_compute_loss_func(lam=LAM, o_index=1, loss="focal", gamma=1.5, mom_norm="valid")
    out = m(input_ids=ids, attention_mask=mask)
    assert_same(m, ff(out, labels), m, direct(m, ids, mask, labels, loss="focal", gamma=1.5))
    with pytest.raises(ValueError, match="reduction"):
        mom_compute_loss_func(reduction="sum")


def test_compute_loss_func_paper_is_the_default():
    """The default normalisation is the paper's: MoM term over B x 128 whatever
    the padded length T of the batch (9 here), not over the valid tokens."""
    m = tiny_model()
    ids, mask, labels = batch()
    out = m(input_ids=ids, attention_mask=mask)
    assert_same(m, mom_compute_loss_func(lam=LAM, o_index=1)(out, labels),
                m, paper(m, ids, mask, labels))
    out = m(input_ids=ids, attention_mask=mask)
    explicit = mom_compute_loss_func(lam=LAM, o_index=1, mom_norm="paper", padded_length=128)
    assert_same(m, explicit(out, labels), m, paper(m, ids, mask, labels))
    # the paper's value differs from the other normalisations (so the tests can fail)
    with torch.no_grad():
        p = paper(m, ids, mask, labels)
        for other in ("valid", "rows"):
            assert not torch.allclose(p, direct(m, ids, mask, labels, mom_norm=other)), other
    # padded_length is M
    out = m(input_ids=ids, attention_mask=mask)
    f256 = mom_compute_loss_func(lam=LAM, o_index=1, padded_length=256)
    assert_same(m, f256(out, labels), m, paper(m, ids, mask, labels, M=256))
    # other kwargs still reach mom_cross_entropy under the paper's normalisation
    out = m(input_ids=ids, attention_mask=mask)
    ff = mom_compute_loss_func(lam=LAM, o_index=1, loss="focal", gamma=1.5)
    assert_same(m, ff(out, labels), m, paper(m, ids, mask, labels, loss="focal", gamma=1.5))


@pytest.mark.parametrize("bad", [0, -128, 1.5, True, "128", None])
def test_padded_length_validation(bad):
    m = tiny_model()
    ids, mask, labels = batch()
    out = m(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="padded_length"):
        mom_compute_loss_func(lam=LAM, o_index=1, padded_length=bad)(out, labels)
    with pytest.raises(ValueError, match="padded_length"):
        use_mom_loss(tiny_model(), padded_length=bad)(input_ids=ids, attention_mask=mask,
                                                       labels=labels)


def test_paper_num_items_in_batch_weighting():
    """With num_items_in_batch the micro-batch's paper loss is weighted by its
    share of the label tokens; two micro-batches with the same tokens per
    sentence add up to the paper loss of the whole batch."""
    m = tiny_model()
    ids, mask, labels = batch()
    f = mom_compute_loss_func(lam=LAM, o_index=1)
    valid = int((labels != -100).sum())
    out = m(input_ids=ids, attention_mask=mask)
    assert_same(m, f(out, labels, num_items_in_batch=torch.tensor(40)),
                m, paper(m, ids, mask, labels) * (valid / 40))
    # accumulation: 4 sentences, 2 micro-batches of 2, every sentence 6 label tokens
    g = torch.Generator().manual_seed(3)
    ids4 = torch.randint(1, 50, (4, 8), generator=g)
    mask4 = torch.ones(4, 8, dtype=torch.long)
    lab4 = torch.randint(0, C, (4, 8), generator=g)
    lab4[:, 0] = -100
    lab4[:, 7] = -100
    lab4[0, 2:5] = 1
    lab4[3, 1:3] = 1
    n = int((lab4 != -100).sum())
    assert n == 24
    acc = sum(f(m(input_ids=ids4[s], attention_mask=mask4[s]), lab4[s], num_items_in_batch=n)
              for s in (slice(0, 2), slice(2, 4)))
    ref_model = tiny_model()
    assert_same(m, acc, ref_model, paper(ref_model, ids4, mask4, lab4))
    # a micro-batch without label tokens adds exactly 0
    out = m(input_ids=ids, attention_mask=mask)
    empty = torch.full_like(labels, -100)
    assert float(f(out, empty, num_items_in_batch=torch.tensor(40)).detach()) == 0.0


def test_trainer_uses_compute_loss_func(tmp_path):
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments
    m = tiny_model()
    ids, mask, labels = batch()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                             per_device_train_batch_size=3)
    tr = Trainer(model=m, args=args, compute_loss_func=mom_compute_loss_func(lam=LAM, o_index=1))
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    loss = tr.compute_loss(m, dict(inputs))
    ref_model = tiny_model()
    assert_same(m, loss, ref_model, paper(ref_model, ids, mask, labels))
    loss = tr.compute_loss(m, dict(inputs), num_items_in_batch=torch.tensor(40))
    valid = int((labels != -100).sum())
    assert_same(m, loss, ref_model, paper(ref_model, ids, mask, labels) * (valid / 40))
    tr = Trainer(model=m, args=args,
                 compute_loss_func=mom_compute_loss_func(lam=LAM, o_index=1, mom_norm="valid"))
    loss = tr.compute_loss(m, dict(inputs), num_items_in_batch=torch.tensor(40))
    assert_same(m, loss, ref_model, direct(ref_model, ids, mask, labels, reduction="sum") / 40)


def test_use_mom_loss_model_forward():
    m = use_mom_loss(tiny_model(), mom_norm="valid")  # o_index from config.label2id["O"] = 1
    assert m.mom_loss_config["o_index"] == 1
    ref = tiny_model()
    ids, mask, labels = batch()
    out = m(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 9, C)
    assert_same(m, out.loss, ref, direct(ref, ids, mask, labels))
    # not the model's own CE
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, C), labels.reshape(-1))
    assert not torch.allclose(out.loss, ce)
    # num_items_in_batch (Trainer with model_accepts_loss_kwargs)
    out = m(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=25)
    assert_same(m, out.loss, ref, direct(ref, ids, mask, labels, reduction="sum") / 25)
    # tuple outputs keep the loss first
    out = m(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and out[1].shape == (3, 9, C)
    # no labels: no loss; calling again replaces the settings
    assert m(input_ids=ids, attention_mask=mask).loss is None
    use_mom_loss(m, lam=1.0, o_index=1)
    out = m(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ce.detach(), rtol=1e-5, atol=1e-6)
    # the default is the paper's normalisation, padded_length is M
    use_mom_loss(m)
    assert m.mom_loss_config["o_index"] == 1
    out = m(input_ids=ids, attention_mask=mask, labels=labels)
    assert_same(m, out.loss, ref, paper(ref, ids, mask, labels))
    use_mom_loss(m, padded_length=64)
    out = m(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=25)
    valid = int((labels != -100).sum())
    assert_same(m, out.loss, ref, paper(ref, ids, mask, labels, M=64) * (valid / 25))
    # the class is untouched
    plain = tiny_model()
    out = plain(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ce.detach(), rtol=1e-5, atol=1e-6)


def test_global_mean_single_process_equals_mean():
    torch.manual_seed(0)
    x = torch.randn(40, C, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (40,))
    y[::7] = -100
    w = torch.rand(C, dtype=torch.float64) + 0.5
    for kw in ({}, {"weight": w}, {"loss": "focal"}):
        a = global_mean_mom_cross_entropy(x, y, 0.3, o_index=2, **kw)
        b = momkernels.mom_cross_entropy(x, y, 0.3, o_index=2, **kw)
        ga, = torch.autograd.grad(a, x)
        gb, = torch.autograd.grad(b, x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)
    # the paper's normalisation: "rows" and a number (the global D_MoM)
    for kw in ({}, {"weight": w}, {"loss": "focal"}):
        for norm in ("rows", 8 * 128, 333.5):
            a = global_mean_mom_cross_entropy(x, y, 0.3, o_index=2, mom_norm=norm, **kw)
            b = momkernels.mom_cross_entropy(x, y, 0.3, o_index=2, mom_norm=norm, **kw)
            ga, = torch.autograd.grad(a, x)
            gb, = torch.autograd.grad(b, x)
            torch.testing.assert_close(a, b, msg=f"{norm} {kw}")
            torch.testing.assert_close(ga, gb, msg=f"{norm} {kw}")
    for bad in (0, -1.0, float("nan"), float("inf"), True, "paper"):
        with pytest.raises(ValueError, match="mom_norm"):
            global_mean_mom_cross_entropy(x, y, 0.3, mom_norm=bad)


@pytest.mark.parametrize("ignore_index", [2**32, 2**32 + 1, -2**31 - 1, 2**40])
def test_global_mean_int32_targets_ignore_index_outside_int32(ignore_index):
    """docs/SEMANTICS.md S11 in the distributed path: an ignore_index outside
    the int32 range matches no int32 target.  The global denominator counts
    valid rows with rows.valid_denominator, which compares exactly; a plain
    ``t != ignore_index`` on int32 targets wraps 2**32 to 0 (2**32 + 1 to 1)
    and would leave that class's rows out of D."""
    torch.manual_seed(0)
    x = torch.randn(24, C, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (24,))
    y[:6], y[6:9] = 0, 1  # rows of the classes a wrapped comparison would drop
    w = torch.rand(C, dtype=torch.float64) + 0.5
    for weight in (None, w):
        want_d = 24.0 if weight is None else float(w[y].sum())
        d32 = global_denominator(y.int(), weight, ignore_index=ignore_index)
        d, rows = global_denominator(y.int(), weight, ignore_index=ignore_index, with_rows=True)
        assert float(d32) == float(d) == pytest.approx(want_d, rel=1e-12) and float(rows) == 24
        for norm in ("valid", "rows", 40.0):
            a = global_mean_mom_cross_entropy(x, y.int(), 0.3, o_index=0, weight=weight,
                                              ignore_index=ignore_index, mom_norm=norm)
            # nothing is ignored: the plain mean over int64 targets
            b = momkernels.mom_cross_entropy(x, y, 0.3, o_index=0, weight=weight, mom_norm=norm)
            ga, = torch.autograd.grad(a, x)
            gb, = torch.autograd.grad(b, x)
            torch.testing.assert_close(a, b, msg=f"{norm} weight={weight is not None}")
            torch.testing.assert_close(ga, gb, msg=f"{norm} weight={weight is not None}")
