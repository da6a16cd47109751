"""pytest configuration of the momkernels suite.

* Without a GPU, Triton kernels can only run in the interpreter: set
  TRITON_INTERPRET=1 before anything imports triton (a user's explicit
  setting wins).
* Hypothesis profiles: "ci" (default, ~60 examples per property) and "long"
  (2000), selected with the env variable HYPOTHESIS_PROFILE.
* The ``slow`` marker is declared in pyproject.toml and again here, so the
  suite also runs from another rootdir.
* ``MOMKERNELS_TEST_DEADLINE=S``: tests that would start more than S seconds
  after the session began are skipped, so a time-boxed run (bench/gpu_session.sh)
  still ends normally and writes its report.
* ``device``: the grids written once for every device.  A test that takes the
  ``device`` fixture runs on "cpu" always and on "cuda" when
  torch.cuda.is_available() (skipped otherwise, with the reason); a test that
  also takes a ``backend`` parameter (helpers.backend_params) is skipped where
  that backend cannot run on that device (``_backend_runs_on_device``), so
  one parametrisation covers both devices' backends.
* torch.compile's on-disk cache is a fresh folder per session (unless the user
  sets TORCHINDUCTOR_CACHE_DIR): inductor's FX-graph cache key does not cover a
  custom op's fake (meta) outputs, so code compiled against another build of
  momkernels (e.g. the Triton op's coef of shape (3,) before it became (2,)) was
  reused and failed its own shape assertions.
"""

import os
import tempfile
import time

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="momk-inductor-"))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_DEADLINE = float(os.environ.get("MOMKERNELS_TEST_DEADLINE") or 0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running tests, deselected in CI with -m 'not slow'")
    config._momkernels_start = time.monotonic()


def pytest_runtest_setup(item):
    if _DEADLINE and time.monotonic() - item.config._momkernels_start > _DEADLINE:
        pytest.skip(f"MOMKERNELS_TEST_DEADLINE: {_DEADLINE:.0f} s spent")


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests may change the thread count or the default dtype: put them back."""
    threads = torch.get_num_threads()
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(default_dtype)


@pytest.fixture
def gen(request):
    """A torch.Generator seeded from the test id: reproducible, different per case."""
    import zlib

    g = torch.Generator()
    g.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    return g


HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA GPU here (torch.cuda.is_available() is False): the cuda "
                         "half of a device-parametrised grid runs on a GPU machine"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device of a grid written once for every device: "cpu", "cuda"."""
    return request.param


@pytest.fixture(autouse=True)
def _backend_runs_on_device(request):
    """Skip a (device, backend) case whose backend cannot run on that device
    (e.g. "triton" on CPU tensors without TRITON_INTERPRET=1, "cpp" on CUDA
    tensors with a CPU-only build)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if "device" in params and "backend" in params:
        from momkernels.backends import unavailable_reason

        why = unavailable_reason(params["backend"], torch.device(params["device"]))
        if why is not None:
            pytest.skip(f"backend {params['backend']!r} on {params['device']}: "
                        f"{why.splitlines()[0]}")
