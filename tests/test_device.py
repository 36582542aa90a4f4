"""Tensors follow their inputs' device and dtype.

Without a GPU, PyTorch's ``meta`` device stands in for one: a tensor that a function creates
without ``device=`` lands on the CPU, and meeting the inputs on ``meta`` raises the error a CUDA
run would ("Expected all tensors to be on the same device"). Only the arithmetic runs on
``meta`` (no values), so the functions checked are those that do not read values back. The
tests marked ``cuda`` run on a real GPU when there is one.
"""

import pyro
import pytest
import torch

import pyrofail as pf
from pyrofail import bounds
from pyrofail.analysis.figures import plots
from pyrofail.analysis.reference import maxima
from pyrofail.training import build, compiled

FAKE = "meta"
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no GPU here (torch.cuda.is_available())"
)


@pytest.fixture
def fake_device():
    """No argument validation (it reads values, which ``meta`` tensors do not have)."""
    old = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    with pyro.validation_enabled(False):
        yield FAKE
    torch.distributions.Distribution.set_default_validate_args(old)


def _pair(restarts=2, device="cpu", dtype=torch.float32):
    model = build.learned_model(1, 2, 0.1, hidden=(8,), restarts=restarts).to(device=device, dtype=dtype)
    guide = build.guide("mean_field", 1, 2, hidden=(8,), restarts=restarts).to(device=device, dtype=dtype)
    return model, guide


@pytest.mark.parametrize("iwae", [False, True])
def test_the_training_loss_follows_its_inputs(fake_device, iwae):
    model, guide = _pair(device=fake_device)
    x = torch.randn(5, 2, device=fake_device)
    eps = torch.randn(3, 2, 5, 1, device=fake_device)
    active = torch.ones(2, dtype=torch.bool, device=fake_device)
    loss = compiled.direct_loss(model, guide, x, eps, active, iwae)
    assert loss.device.type == fake_device and loss.shape == ()
    # and in float64 on the CPU, float64 throughout
    model, guide = _pair(dtype=torch.float64)
    x, eps = torch.randn(5, 2, dtype=torch.float64), torch.randn(3, 2, 5, 1, dtype=torch.float64)
    loss = compiled.direct_loss(model, guide, x, eps, torch.ones(2, dtype=torch.bool), iwae)
    assert loss.dtype == torch.float64
    loss.backward()
    assert all(p.grad.dtype == torch.float64 for p in (*model.parameters(), *guide.parameters()))


@pytest.mark.parametrize("bound", [bounds.elbo, bounds.iwae])
def test_the_per_point_bounds_follow_their_inputs(fake_device, bound):
    model, guide = _pair(device=fake_device)
    value = bound(model, guide, torch.randn(5, 2, device=fake_device), 4).value
    assert value.device.type == fake_device and value.shape == (2, 5)


def test_the_decoder_curve_of_the_figures_follows_the_model(fake_device):
    model, _ = _pair(restarts=None, device=fake_device)
    z, f = plots._curve(model, 1, n=7)
    assert z.device.type == fake_device and f.device.type == fake_device and f.shape == (7, 2)


def test_the_nuts_starting_search_follows_the_model(fake_device):
    # the Adam and Newton ascent to the maxima run where the model is; what follows them
    # (telling maxima apart, choosing the chains' starts) reads values back, which `meta` has
    # not: the cuda-marked reference tests below take that part on a GPU
    model, _ = _pair(restarts=None, device=fake_device)
    x, z = torch.randn(3, 2, device=fake_device), torch.randn(4, 3, 1, device=fake_device)
    z = maxima._newton(model, x, maxima._adam(model, x, z, 2, 0.05), 2, 0.05)
    assert z.device.type == fake_device and z.shape == (4, 3, 1)


@pytest.mark.cuda
@needs_cuda
def test_a_tiny_run_on_the_gpu(tmp_path):
    from pyrofail import analyze

    out = tmp_path / "run"
    args = ["--preset", "tiny", "--quiet", "--steps", "20", "--device", "cuda", "--reference-points", "20"]
    assert analyze.main([*args, "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("method", ["grid", "nuts"])
def test_reference_posterior_of_a_model_on_the_gpu(method):
    truth = pf.zoo.model("figure8")
    x = truth.sample(4, seed=0).x
    ref = pf.analysis.reference_posterior(truth.to("cuda"), x.to("cuda"), method, num_draws=50, seed=0)
    on_cpu = pf.analysis.reference_posterior(truth.to("cpu"), x, method, num_draws=50, seed=0)
    assert ref.posterior["z"].shape == on_cpu.posterior["z"].shape
