"""Bad input gets a clear error naming the argument (docs/spec.md §8, "Errors"),
raised before any kernel runs, for every backend; out-of-range targets on CPU
raise IndexError like PyTorch's."""

from __future__ import annotations

import math

import pytest
import torch

import momkernels
from helpers import BACKENDS, INTERPRETED, backend_params

N, C = 5, 4


def _x(dtype=torch.float32):
    return torch.randn(N, C, dtype=dtype)


def _t():
    return torch.tensor([0, 1, 2, 3, -100])


def _mom(*args, **kw):
    return momkernels.mom_cross_entropy(*args, **kw)


# (id, exception type, match, call) -- `match` names the argument (and value)
ERROR_CASES = [
    # shapes
    ("target_shape", ValueError, r"target shape \(4,\).*input shape \(5, 4\)",
     lambda b: _mom(_x(), _t()[:4], backend=b)),
    ("target_shape_nd", ValueError, r"target shape",
     lambda b: _mom(torch.randn(2, C, 3), torch.zeros(2, 4, dtype=torch.long), backend=b)),
    ("target_for_1d_input", ValueError, r"target shape",
     lambda b: _mom(torch.randn(C), torch.zeros(1, dtype=torch.long), backend=b)),
    ("input_0dim", ValueError, r"input",
     lambda b: _mom(torch.tensor(1.0), torch.tensor(0), backend=b)),
    ("input_zero_classes", ValueError, r"C >= 1|o_index",
     lambda b: _mom(torch.randn(3, 0), torch.zeros(3, dtype=torch.long), backend=b)),
    # target dtype
    ("target_float", TypeError, r"target.*(int64|class indices)",
     lambda b: _mom(_x(), _t().float(), backend=b)),
    ("target_bool", TypeError, r"target",
     lambda b: _mom(_x(), _t() > 0, backend=b)),
    ("target_uint8", TypeError, r"target",
     lambda b: _mom(_x(), _t().clamp_min(0).to(torch.uint8), backend=b)),
    ("soft_targets", TypeError, r"soft",
     lambda b: _mom(_x(), torch.softmax(_x(), -1), backend=b)),
    ("soft_targets_ce", TypeError, r"soft",
     lambda b: momkernels.cross_entropy(_x(), torch.softmax(_x(), -1), backend=b)),
    # weight
    ("weight_length", ValueError, r"weight.*\(4,\).*\(5,\)",
     lambda b: _mom(_x(), _t(), weight=torch.ones(5), backend=b)),
    ("weight_2d", ValueError, r"weight",
     lambda b: _mom(_x(), _t(), weight=torch.ones(1, C), backend=b)),
    ("weight_int", TypeError, r"weight.*float",
     lambda b: _mom(_x(), _t(), weight=torch.ones(C, dtype=torch.long), backend=b)),
    ("weight_not_tensor", TypeError, r"weight",
     lambda b: _mom(_x(), _t(), weight=[1.0] * C, backend=b)),
    ("weight_ce_length", ValueError, r"weight",
     lambda b: momkernels.cross_entropy(_x(), _t(), torch.ones(3), backend=b)),
    # devices ("meta" tensors stand in for another device)
    ("target_device", ValueError, r"target is on meta.*input is on cpu",
     lambda b: _mom(_x(), torch.zeros(N, dtype=torch.long, device="meta"), backend=b)),
    ("weight_device", ValueError, r"weight is on meta",
     lambda b: _mom(_x(), _t(), weight=torch.ones(C, device="meta"), backend=b)),
    # lam
    ("lam_high", ValueError, r"lam.*1\.5", lambda b: _mom(_x(), _t(), 1.5, backend=b)),
    ("lam_negative", ValueError, r"lam.*-0\.1", lambda b: _mom(_x(), _t(), -0.1, backend=b)),
    ("lam_nan", ValueError, r"lam", lambda b: _mom(_x(), _t(), math.nan, backend=b)),
    ("lam_str", TypeError, r"lam", lambda b: _mom(_x(), _t(), "0.5", backend=b)),
    # o_index
    ("o_index_high", ValueError, r"o_index.*\[0, 4\).*4",
     lambda b: _mom(_x(), _t(), o_index=C, backend=b)),
    ("o_index_negative", ValueError, r"o_index.*-1",
     lambda b: _mom(_x(), _t(), o_index=-1, ignore_index=-100, backend=b)),
    ("o_index_is_ignore", ValueError, r"o_index.*ignore_index",
     lambda b: _mom(_x(), _t(), o_index=2, ignore_index=2, backend=b)),
    ("o_index_float", TypeError, r"o_index", lambda b: _mom(_x(), _t(), o_index=1.0, backend=b)),
    # option names
    ("loss", ValueError, r"loss.*'hinge'", lambda b: _mom(_x(), _t(), loss="hinge", backend=b)),
    ("reduction", ValueError, r"reduction.*'avg'",
     lambda b: _mom(_x(), _t(), reduction="avg", backend=b)),
    ("reduction_ce", ValueError, r"reduction.*'avg'",
     lambda b: momkernels.cross_entropy(_x(), _t(), reduction="avg", backend=b)),
    ("mom_norm", ValueError, r"mom_norm.*'tokens'",
     lambda b: _mom(_x(), _t(), mom_norm="tokens", backend=b)),
    # a number must be positive and finite, and not a bool
    ("mom_norm_zero", ValueError, r"mom_norm.*0", lambda b: _mom(_x(), _t(), mom_norm=0, backend=b)),
    ("mom_norm_negative", ValueError, r"mom_norm.*-12\.5",
     lambda b: _mom(_x(), _t(), mom_norm=-12.5, backend=b)),
    ("mom_norm_nan", ValueError, r"mom_norm.*nan",
     lambda b: _mom(_x(), _t(), mom_norm=math.nan, backend=b)),
    ("mom_norm_inf", ValueError, r"mom_norm.*inf",
     lambda b: _mom(_x(), _t(), mom_norm=math.inf, backend=b)),
    ("mom_norm_bool", ValueError, r"mom_norm.*True",
     lambda b: _mom(_x(), _t(), mom_norm=True, backend=b)),
    ("mom_norm_tensor", TypeError, r"mom_norm.*Tensor",
     lambda b: _mom(_x(), _t(), mom_norm=torch.tensor(4.0), backend=b)),
    # loss parameters
    ("gamma", ValueError, r"gamma.*-1", lambda b: _mom(_x(), _t(), loss="focal", gamma=-1.0,
                                                       backend=b)),
    ("dice_alpha", ValueError, r"dice_alpha.*-0\.5",
     lambda b: _mom(_x(), _t(), loss="dice", dice_alpha=-0.5, backend=b)),
    ("dice_smooth_zero", ValueError, r"dice_smooth.*0",
     lambda b: _mom(_x(), _t(), loss="dice", dice_smooth=0.0, backend=b)),
    ("dice_smooth_negative", ValueError, r"dice_smooth",
     lambda b: _mom(_x(), _t(), loss="dice", dice_smooth=-1.0, backend=b)),
    ("gamma_nan", ValueError, r"gamma", lambda b: _mom(_x(), _t(), gamma=math.nan, backend=b)),
    # label smoothing
    ("label_smoothing_high", ValueError, r"label_smoothing.*1\.5",
     lambda b: _mom(_x(), _t(), label_smoothing=1.5, backend=b)),
    ("label_smoothing_negative", ValueError, r"label_smoothing.*-0\.1",
     lambda b: _mom(_x(), _t(), label_smoothing=-0.1, backend=b)),
    ("label_smoothing_ce", ValueError, r"label_smoothing",
     lambda b: momkernels.cross_entropy(_x(), _t(), label_smoothing=2.0, backend=b)),
    ("label_smoothing_focal", ValueError, r"label_smoothing.*'focal'",
     lambda b: _mom(_x(), _t(), loss="focal", label_smoothing=0.1, backend=b)),
    ("label_smoothing_dice", ValueError, r"label_smoothing.*'dice'",
     lambda b: _mom(_x(), _t(), loss="dice", label_smoothing=0.1, backend=b)),
    # logits dtype
    ("input_int", TypeError, r"input.*float.*int64",
     lambda b: _mom(_x().long(), _t(), backend=b)),
    ("input_bool", TypeError, r"input", lambda b: _mom(_x() > 0, _t(), backend=b)),
    ("input_complex", TypeError, r"input.*complex",
     lambda b: _mom(_x().to(torch.complex64), _t(), backend=b)),
    ("input_int_ce", TypeError, r"input", lambda b: momkernels.cross_entropy(_x().int(), _t(),
                                                                           backend=b)),
    ("input_not_tensor", TypeError, r"input", lambda b: _mom(_x().tolist(), _t(), backend=b)),
    ("target_not_tensor", TypeError, r"target", lambda b: _mom(_x(), [0, 1, 2, 3, 0], backend=b)),
    ("ignore_index_float", TypeError, r"ignore_index",
     lambda b: momkernels.cross_entropy(_x(), _t(), ignore_index=-100.0, backend=b)),
]


@pytest.mark.parametrize("case", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
def test_bad_argument_raises(backend, case):
    exc, match, call = case
    with pytest.raises(exc, match=match):
        call(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend.*'cuda'"):
        _mom(_x(), _t(), backend="cuda")
    with pytest.raises(ValueError, match=r"backend.*'numpy'"):
        momkernels.cross_entropy(_x(), _t(), backend="numpy")
    with pytest.raises(ValueError, match=r"backend"):
        momkernels.MoMLoss(backend="fast")


def test_triton_unavailable_says_why():
    if "triton" in momkernels.available_backends("cpu"):
        pytest.skip("triton is available here")
    with pytest.raises(momkernels.BackendUnavailableError, match=r"triton") as info:
        _mom(_x(), _t(), backend="triton")
    assert isinstance(info.value, RuntimeError)
    assert len(str(info.value)) > 20


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_backend_unavailable_for_device_says_why(backend):
    """A backend asked for tensors it has no kernels for ("meta" stands in for
    an unsupported device) raises BackendUnavailableError, never a wrong number."""
    x = torch.randn(N, C, device="meta")
    t = torch.zeros(N, dtype=torch.long, device="meta")
    with pytest.raises(momkernels.BackendUnavailableError, match=r"meta|not built|install") as e:
        _mom(x, t, backend=backend)
    assert isinstance(e.value, RuntimeError)
    assert backend not in momkernels.available_backends("meta")


def test_triton_on_cpu_needs_the_interpreter():
    """Without TRITON_INTERPRET=1 (read at import) "triton" is unavailable for
    CPU tensors and the error says how to get it (a fresh interpreter)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, momkernels\n"
        "x = torch.randn(3, 4); t = torch.tensor([0, 1, 2])\n"
        "assert 'triton' not in momkernels.available_backends('cpu')\n"
        "try:\n"
        "    momkernels.mom_cross_entropy(x, t, backend='triton')\n"
        "except momkernels.BackendUnavailableError as e:\n"
        "    print('MSG', e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    msg = r.stdout.split("MSG", 1)[1]
    assert "TRITON_INTERPRET" in msg or "pip install triton" in msg, msg


def test_module_errors():
    with pytest.raises(ValueError, match="reduction"):
        momkernels.CrossEntropyLoss(reduction="avg")(_x(), _t())
    with pytest.raises(TypeError, match="soft"):
        momkernels.CrossEntropyLoss()(_x(), torch.softmax(_x(), -1))
    with pytest.raises(ValueError, match="dice_smooth"):
        momkernels.MoMLoss(0.5, loss="dice", dice_smooth=0.0)
    with pytest.raises(ValueError, match="mom_norm"):
        momkernels.MoMLoss(0.5, mom_norm=-1)
    with pytest.raises(ValueError, match="mom_norm"):  # the per-call override is checked too
        momkernels.MoMLoss(0.5)(_x(), _t(), mom_norm=0.0)
    m = momkernels.MoMLoss(0.5)
    with pytest.raises(ValueError, match="lam"):  # an option set on the module is checked
        m.lam = 1.5
    with pytest.raises(ValueError, match="loss"):
        m.loss = "hinge"
    m.lam, m.loss = 0.25, "focal"
    assert (m.options.lam, m.options.loss) == (0.25, "focal")


@pytest.mark.parametrize("backend", ["auto", "cpp", "torch"])
def test_inplace_backward_is_a_triton_option(backend):
    """inplace_backward=True asks the Triton backward to write the gradient over
    the logits: with any other backend ("auto" included, which may choose
    another) it is a ValueError naming it, for the function and the module."""
    with pytest.raises(ValueError, match=rf"inplace_backward.*triton.*'{backend}'"):
        _mom(_x(), _t(), backend=backend, inplace_backward=True)
    with pytest.raises(ValueError, match=rf"inplace_backward.*triton.*'{backend}'"):
        momkernels.MoMLoss(0.5, backend=backend, inplace_backward=True)


# ------------------------------------------------------------- target range


def _bad_targets():
    return [
        ("above", torch.tensor([0, 1, 4, 3, -100])),        # == C
        ("far_above", torch.tensor([0, 1, 1000, 3, -100])),
        ("negative", torch.tensor([0, -1, 2, 3, -100])),    # -1 is not ignore_index
        ("int32", torch.tensor([0, 1, 7, 3, -100], dtype=torch.int32)),
    ]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name,t", _bad_targets(), ids=[n for n, _ in _bad_targets()])
@pytest.mark.parametrize("backend", backend_params())
def test_out_of_range_target_index_error(backend, name, t, reduction):
    """On CPU, IndexError like F.cross_entropy (the cpp kernel raises it itself,
    the torch backend checks first).  Triton under TRITON_INTERPRET=1 emulates
    the GPU kernels, so it behaves as on a GPU: no out-of-bounds access, the
    row's loss is NaN (docs/spec.md); the eager check is the way to get an error."""
    with pytest.raises(IndexError, match=r"out of bounds"):
        torch.nn.functional.cross_entropy(_x(), t.long(), reduction=reduction)
    if backend in INTERPRETED:
        bad = (t != -100) & ((t < 0) | (t >= C))
        out = _mom(_x(), t, 0.5, reduction="none", backend=backend)
        assert torch.isnan(out[bad]).all() and not torch.isnan(out[~bad]).any(), out
        assert torch.isnan(_mom(_x(), t, 0.5, reduction="mean", backend=backend))
        return
    with pytest.raises(IndexError, match=r"out of bounds"):
        _mom(_x(), t, 0.5, reduction=reduction, backend=backend)
    with pytest.raises(IndexError, match=r"out of bounds"):
        momkernels.cross_entropy(_x(), t, reduction=reduction, backend=backend)


@pytest.mark.parametrize("name,t", _bad_targets(), ids=[n for n, _ in _bad_targets()])
@pytest.mark.parametrize("backend", backend_params())
def test_out_of_range_target_checked_eagerly(backend, name, t, monkeypatch):
    """check_targets=True and MOMKERNELS_CHECK=1 raise before any kernel runs,
    with a message that names the target value and the range."""
    monkeypatch.delenv("MOMKERNELS_CHECK", raising=False)
    bad = int(t[(t != -100) & ((t < 0) | (t >= C))][0])
    with pytest.raises(IndexError, match=rf"Target {bad} is out of bounds.*\[0, {C}\)"):
        _mom(_x(), t, 0.5, backend=backend, check_targets=True)
    monkeypatch.setenv("MOMKERNELS_CHECK", "1")
    with pytest.raises(IndexError, match=rf"Target {bad} is out of bounds.*\[0, {C}\)"):
        _mom(_x(), t, 0.5, backend=backend)
    with pytest.raises(IndexError, match=rf"Target {bad}"):
        momkernels.cross_entropy(_x(), t, backend=backend)
    with pytest.raises(IndexError, match=rf"Target {bad}"):
        momkernels.MoMLoss(0.5, backend=backend)(_x(), t)


@pytest.mark.parametrize("backend", backend_params())
def test_eager_check_accepts_valid_targets(backend, monkeypatch):
    """The eager check does not reject ignore_index (also a custom one inside
    the class range or below -100) and changes nothing."""
    x = _x()
    for ignore_index, t in [(-100, _t()), (2, torch.tensor([0, 1, 2, 3, 2])),
                            (-7, torch.tensor([-7, 1, 2, 3, 0]))]:
        want = _mom(x, t, 0.5, ignore_index=ignore_index, backend=backend)
        got = _mom(x, t, 0.5, ignore_index=ignore_index, backend=backend, check_targets=True)
        assert torch.equal(got, want)
    monkeypatch.setenv("MOMKERNELS_CHECK", "0")  # "0" means off
    t = torch.tensor([0, 1, 2, 3, 9])
    if backend in INTERPRETED:  # GPU semantics (see above): NaN, no error
        assert torch.isnan(_mom(x, t, 0.5, backend=backend))
        return
    with pytest.raises(IndexError):  # the kernel's own error, not the eager check's
        _mom(x, t, 0.5, backend=backend)
