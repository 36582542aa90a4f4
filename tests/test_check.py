"""pyrofail.program_check on Pyro programs with known answers, on the zoo's objects and on Pyro's VAE."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from benchmarks.program_digits import VAE, load_digits_binary, train
from pyrofail.analysis.hardness import HARD_KL
from pyrofail.errors import UsageError
from pyrofail.models import LinearGaussian
from pyrofail.program_check import VERDICTS, check
from tests.guides.exact import ExactPosteriorGuide


def conjugate_model(x):
    """z ~ N(0, 1), x | z ~ N(z, 1): p(z | x) = N(x / 2, 1 / 2)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def shifted_guide(shift):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2 + shift, 0.5**0.5).to_event(1))

    return guide


X = torch.randn(30, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2**0.5


def test_exact_guide_has_no_gap_and_a_shifted_one_the_analytic_kl():
    exact = check(conjugate_model, shifted_guide(0.0), X, points=None)
    assert exact.reference == "grid" and exact.usable == 30 and exact.guide_family == "mean-field Gaussian"
    # log w = log p(x) at every draw: the gap is the quadrature's error alone
    assert abs(exact.pmo_gap.mean) < 1e-6 and abs(exact.kl_star.mean) < 1e-4
    assert (exact.gap_large, exact.richer_family, exact.verdict) == (False, "no", "ok")
    shifted = check(conjugate_model, shifted_guide(0.4), X, points=None)
    # KL(N(m + 0.4, 1/2) || N(m, 1/2)) = 0.4^2 / (2 * 1/2) = 0.16 at every point
    assert abs(shifted.pmo_gap.mean - 0.16) < 3 * shifted.pmo_gap.stderr
    assert abs(shifted.amortization_gap.mean - 0.16) < 3 * shifted.amortization_gap.stderr
    assert (shifted.gap_large, shifted.hard, shifted.richer_family, shifted.amortization) == (
        True,
        False,
        "no",
        "yes",
    )
    assert shifted.verdict == "amortization"


def test_two_equal_modes_are_a_family_failure():
    sigma = 0.1

    def model(x):  # x | z ~ N(z^2, sigma^2): modes at z = +-sqrt(x), 4 x / sigma >= 40 of their widths apart
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * z, sigma).to_event(1), obs=x)

    def guide(x):  # the Laplace approximation of the right-hand mode
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.sqrt(), sigma / (2 * x.sqrt())).to_event(1))

    x = torch.linspace(1.0, 3.0, 12, dtype=torch.float64)[:, None]
    r = check(model, guide, x, points=None)
    # the best mean-field Gaussian sits on one of two equal, separated modes: KL* = log 2
    assert torch.allclose(
        r.point_values("kl_star").double(), torch.full((12,), math.log(2), dtype=torch.float64), atol=0.01
    )
    assert r.share_hard.mean == 1.0 and r.hard and r.kl_star.mean > HARD_KL
    assert (r.gap_large, r.richer_family, r.amortization, r.verdict) == (True, "yes", "no", "family")


def test_the_zoos_objects_are_checked_as_they_are():
    process = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0).double()
    x = process.sample(25, seed=1).x
    r = check(process, ExactPosteriorGuide(process), x, points=20, seed=3)
    assert r.n_points == 20 and r.latent_dim == 1 and r.guide_family == "other"
    assert abs(r.pmo_gap.mean) < 1e-4 and r.verdict == "ok"
    json.dumps(r.to_dict())
    with pytest.raises(UsageError, match="x_test has 3 features"):
        check(process, ExactPosteriorGuide(process), x, x_test=torch.zeros(4, 3))


def test_pyro_vae_example_on_digits_trained_with_svi():
    """Pyro's examples/vae/vae.py, its model and guide as written there (K = 2, 32 hidden units),
    trained with plain SVI for a few seconds on binarised 8x8 digits, then checked."""
    torch.manual_seed(0)
    x_train, x_test = load_digits_binary()
    vae = VAE(z_dim=2, hidden_dim=32)
    train(vae, x_train, steps=200)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    # grid cells of 0.05 instead of 0.02: six times fewer nodes, the same numbers to the digits
    # shown here (measured: PMO gap 0.109 +- 0.027, -log p(x) 25.162 with either)
    r = check(vae.model, vae.guide, x_train, x_test=x_test, points=8, reference_options={"base_width": 0.05})
    assert (r.reference, r.latent_dim, r.n_points, r.guide_family) == ("grid", 2, 8, "mean-field Gaussian")
    assert r.usable > 0
    # the PMO gap is a KL divergence: at least 0 up to its Monte Carlo error
    assert r.pmo_gap.mean > -2 * r.pmo_gap.stderr
    assert 0.0 <= r.share_hard.mean <= 1.0 and r.verdict in VERDICTS
    assert r.neg_log_px.exact and r.neg_log_px.mean <= r.neg_elbo.mean + 2 * r.neg_elbo.stderr
    # the user's weights are as they were, and their training goes on
    after = dict(pyro.get_param_store().items())
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None or not p.grad.abs().sum() for p in vae.parameters())
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    assert math.isfinite(svi.step(x_train[:64]))


def test_pf_check_is_the_function_in_a_fresh_interpreter():
    """``import pyrofail as pf; pf.check(...)`` as the README writes it: the attribute is the
    function, loaded on first use, not a module of the same name."""
    import subprocess
    import sys

    code = "import pyrofail as pf, inspect; print(inspect.isfunction(pf.check), 'check' in dir(pf))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
