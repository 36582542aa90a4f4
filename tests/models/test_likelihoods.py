"""Likelihoods of learned models: Gaussian with a fixed, shared or per-feature sigma, and
Bernoulli. Each log_joint against a hand computation or torch.distributions, against the Pyro
trace, batched across restarts, through the grid reference, and in training."""

import doctest
import math

import pytest
import torch
from pyro import poutine
from scipy import integrate

import pyrofail as pf
from pyrofail.analysis.reference import grid
from pyrofail.errors import UsageError
from pyrofail.models import LatentBernoulli, LatentGaussian, latent_bernoulli
from pyrofail.models.linear_gaussian import Affine
from pyrofail.nn import MLP, stack_restarts, take_restart

W = torch.tensor([[1.0, 0.5], [-0.4, 0.9], [0.3, 0.2]])  # (D, K) = (3, 2)
B = torch.tensor([0.2, -1.0, 0.5])
SIGMA = torch.tensor([0.3, 0.8, 1.5])


def _per_feature(k=2, sigma=SIGMA, learn=False):
    return LatentGaussian(Affine(W[:, :k], B), k, 3, sigma, learn_noise=learn, noise_per_feature=True)


class Logits(torch.nn.Module):
    """l_d(z) = a_d tanh(z_1 + c_d) + b_d: a fixed nonlinear decoder for Bernoulli tests."""

    def __init__(self):
        super().__init__()
        self.register_buffer("a", torch.tensor([2.0, -3.0, 1.5, 4.0]))
        self.register_buffer("b", torch.tensor([0.1, 0.5, -0.3, 0.0]))
        self.register_buffer("c", torch.tensor([0.0, 0.7, -0.5, 1.2]))

    def forward(self, z):
        return self.a.to(z.dtype) * torch.tanh(z[..., :1] + self.c.to(z.dtype)) + self.b.to(z.dtype)


# -- Gaussian, one sigma per feature ------------------------------------------------------
def test_per_feature_log_joint_by_hand():
    model = _per_feature(k=1)
    z, x = torch.tensor([[0.7]]), torch.tensor([[1.0, -2.0, 0.25]])
    f = [W[d, 0].item() * 0.7 + B[d].item() for d in range(3)]
    expected = -0.5 * 0.7**2 - 0.5 * math.log(2 * math.pi)
    for d in range(3):
        s = SIGMA[d].item()
        expected += -0.5 * ((x[0, d].item() - f[d]) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    assert float(model.log_joint(z, x)) == pytest.approx(expected, rel=1e-6)
    assert model.noise_scale.shape == (3,) and torch.allclose(model.noise_scale, SIGMA)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _per_feature(),
        lambda: LatentGaussian(Affine(W, B), 2, 3, 0.6, learn_noise=True),
        lambda: LatentBernoulli(Logits(), 2, 4),
    ],
    ids=["gaussian-per-feature", "gaussian-shared", "bernoulli"],
)
def test_log_joint_equals_the_pyro_trace(make):
    model = make()
    data = model.sample(30, seed=3)
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(model.model, data={"z": data.z})).get_trace(data.x)
        lj = model.log_joint(data.z, data.x)
    assert float(lj.sum()) == pytest.approx(float(trace.log_prob_sum()), rel=1e-5)


@torch.no_grad()
def test_per_feature_sigma_carries_the_restart_dimension():
    sigmas = [SIGMA, torch.tensor([2.0, 0.1, 0.7])]
    models = [_per_feature(sigma=s, learn=True) for s in sigmas]
    batched = stack_restarts(models)
    assert batched.log_noise.shape == (2, 3) and batched.noise_scale.shape == (2, 3)
    z = torch.randn(5, 2, 4, 2, generator=torch.Generator().manual_seed(0))  # (S, R, N, K)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    lj = batched.log_joint(z, x)
    assert lj.shape == (5, 2, 4)
    for r, m in enumerate(models):
        assert torch.allclose(lj[:, r], m.log_joint(z[:, r], x), atol=1e-5)
        back = take_restart(batched, r)
        assert back.log_noise.shape == (3,) and torch.allclose(back.noise_scale, sigmas[r])
    trace = poutine.trace(poutine.condition(batched.model, data={"z": z[0]})).get_trace(x)
    assert float(trace.log_prob_sum()) == pytest.approx(float(lj[0].sum()), rel=1e-5)


def test_batched_construction_takes_a_float_or_one_row_per_restart():
    m = LatentGaussian(Affine(W, B), 2, 3, 0.5, noise_per_feature=True, learn_noise=True, restarts=2)
    assert m.log_noise.shape == (2, 3) and torch.allclose(m.noise_scale, torch.full((2, 3), 0.5))
    rows = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    m = LatentGaussian(Affine(W, B), 2, 3, rows, noise_per_feature=True, restarts=2)
    assert torch.allclose(m.noise_scale, rows)


def test_noise_scale_shape_errors():
    with pytest.raises(
        UsageError, match=r"noise_scale has shape \(3,\); expected a float or \(R,\).*per feature"
    ):
        LatentGaussian(Affine(W, B), 2, 3, SIGMA)
    with pytest.raises(
        UsageError, match=r"noise_scale has shape \(2,\); expected a float, \(D,\) or \(R, D\)"
    ):
        LatentGaussian(Affine(W, B), 2, 3, torch.tensor([0.1, 0.2]), noise_per_feature=True)
    with pytest.raises(UsageError, match=r"expected finite values > 0"):
        LatentGaussian(Affine(W, B), 2, 3, torch.tensor([0.1, 0.0, 1.0]), noise_per_feature=True)


def test_per_feature_samples_have_their_own_spread():
    model = _per_feature()
    data = model.sample(20000, seed=0)
    resid = data.x - model.mean(data.z)
    sd = resid.std(0)
    stderr = SIGMA / math.sqrt(2 * 20000)  # sd of a sample sd of Gaussian draws
    assert ((sd - SIGMA).abs() < 4 * stderr).all(), (sd, SIGMA)


# -- Bernoulli ----------------------------------------------------------------------------
def test_bernoulli_log_joint_against_torch_distributions():
    model = LatentBernoulli(Logits(), 2, 4)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, 2, generator=gen)  # (S, N, K)
    x = (torch.rand(5, 4, generator=gen) < 0.5).float()
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    lik = torch.distributions.Bernoulli(logits=Logits()(z)).log_prob(x).sum(-1)
    assert torch.allclose(model.log_joint(z, x), prior + lik, atol=1e-5)
    assert torch.allclose(model.log_likelihood(z, x), lik, atol=1e-5)


def test_bernoulli_batched_matches_each_restart():
    models = [LatentBernoulli(MLP((2, 6, 4)), 2, 4) for _ in range(3)]
    batched = stack_restarts(models)
    z = torch.randn(2, 3, 5, 2, generator=torch.Generator().manual_seed(2))
    x = (torch.rand(5, 4, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    lj = batched.log_joint(z, x)
    assert lj.shape == (2, 3, 5)
    for r, m in enumerate(models):
        assert torch.allclose(lj[:, r], m.log_joint(z[:, r], x), atol=1e-5)
        assert torch.allclose(take_restart(batched, r).log_joint(z[:, r], x), lj[:, r], atol=1e-5)


def test_bernoulli_samples_have_the_decoders_frequencies():
    bias = torch.tensor([-2.0, 0.0, 1.0])

    class Constant(torch.nn.Module):
        def forward(self, z):
            return bias.expand(*z.shape[:-1], 3)

    n = 20000
    data = LatentBernoulli(Constant(), 1, 3).sample(n, seed=0)
    p = torch.sigmoid(bias)
    assert set(data.x.unique().tolist()) <= {0.0, 1.0}
    assert ((data.x.mean(0) - p).abs() < 4 * (p * (1 - p) / n).sqrt()).all()


# -- the grid reference -------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_grid_log_px_with_per_feature_sigma_is_the_closed_form(k):
    """p(x) = N(b, W W^T + diag sigma^2) for the linear-Gaussian model with per-feature noise."""
    model = _per_feature(k=k).double()
    w, b = W[:, :k].double(), B.double()
    cov = w @ w.T + torch.diag(SIGMA.double() ** 2)
    exact = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
    x = model.sample(40, seed=5).x.double()
    got = grid.grid_posterior(model, x).log_px
    assert torch.allclose(got, exact.log_prob(x), atol=1e-5, rtol=0), (got - exact.log_prob(x)).abs().max()


def test_grid_refines_in_units_of_each_features_sigma():
    """Scaling feature d's decoder, data and sigma by c changes log p(x) by -log c and not the
    mesh: refinement and integrand see only the whitened decoder f_d / sigma_d."""
    base = _per_feature(k=1).double()
    x = base.sample(20, seed=1).x.double()
    c = torch.tensor([1.0, 50.0, 0.02], dtype=torch.float64)
    scaled = LatentGaussian(
        Affine(W[:, :1].double() * c[:, None], B.double() * c),
        1,
        3,
        SIGMA.double() * c,
        noise_per_feature=True,
    ).double()
    a, s = grid.grid_posterior(base, x), grid.grid_posterior(scaled, x * c)
    assert a.mesh_info["nodes"] == s.mesh_info["nodes"]
    assert torch.allclose(s.log_px, a.log_px - c.log().sum(), atol=1e-9)
    assert a.mesh_info["max_change_sigma"] <= 0.5


def test_grid_integrates_a_bernoulli_model_by_its_log_joint():
    model = LatentBernoulli(Logits(), 1, 4).double()
    assert not grid._is_latent_gaussian(model)  # no noise scale: the generic path
    x = model.sample(6, seed=4).x.double()
    got = grid.grid_posterior(model, x).log_px
    for n in range(x.shape[0]):

        def density(t, row=x[n]):
            z = torch.tensor([[t]], dtype=torch.float64)
            return math.exp(float(model.log_joint(z, row[None])))

        value, _ = integrate.quad(density, -12, 12, epsabs=1e-13, epsrel=1e-11, limit=200)
        assert float(got[n]) == pytest.approx(math.log(value), abs=1e-6)


# -- training with each likelihood ---------------------------------------------------------
LIKELIHOODS = {
    "gaussian-fixed": lambda: LatentGaussian(MLP((1, 8, 3)), 1, 3, 0.5),
    "gaussian-shared": lambda: LatentGaussian(MLP((1, 8, 3)), 1, 3, 0.5, learn_noise=True),
    "gaussian-per-feature": lambda: LatentGaussian(
        MLP((1, 8, 3)), 1, 3, 0.5, learn_noise=True, noise_per_feature=True
    ),
    "bernoulli": lambda: LatentBernoulli(MLP((1, 8, 3)), 1, 3),
}


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("guide", ["mean_field", "full_rank", "flow", "mixture"])
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_every_guide_and_objective_trains_every_likelihood(likelihood, guide, objective):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen)
    model = LIKELIHOODS[likelihood]()
    options = {}
    if likelihood == "bernoulli":
        x = (x > 0).to(x.dtype)
        options["noise_scale"] = 1.0  # fit() reads a noise scale from any model= (unused here)
    start = model.log_noise.detach().clone() if hasattr(model, "log_noise") else None
    result = pf.fit(
        x,
        model=model,
        learn_model=True,
        init="random",
        restarts=2,
        steps=8,
        eval_every=8,  # one validation: this checks the mechanics, not the fit
        batch_size=20,
        hidden=(8,),
        guide=guide,
        objective=objective,
        seed=0,
        **options,
    )
    assert type(result.model) is type(model) and result.model.restarts is None
    assert all(math.isfinite(r["validation_objective"]) for r in result.restarts)
    if start is not None:
        assert result.model.log_noise.shape == start.shape
        moved = not torch.equal(result.model.log_noise.detach(), start)
        assert moved == model.learn_noise


def test_docstring_examples_run():
    result = doctest.testmod(latent_bernoulli)
    assert result.attempted > 0 and result.failed == 0
