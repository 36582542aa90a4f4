"""The zoo processes: formulas at known points, seeding, and log_joint against Pyro's trace."""

import math

import pytest
import torch
from pyro import poutine

from pyrofail import zoo
from pyrofail.models import LinearGaussian

NAMES = ["clusters", "figure8", "linear_gaussian", "quadratic"]


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_seeded_and_shaped(name):
    truth = zoo.model(name)
    torch.manual_seed(0)
    a = truth.sample(50, seed=7)
    torch.manual_seed(99)  # the global state must not matter
    b = truth.sample(50, seed=7)
    c = truth.sample(50, seed=8)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == (50, truth.data_dim) and a.z.shape == (50, truth.latent_dim)


@pytest.mark.parametrize("name", NAMES)
def test_log_joint_equals_the_pyro_trace(name):
    truth = zoo.model(name)
    data = truth.sample(20, seed=1)
    conditioned = poutine.condition(truth.model, data={"z": data.z})
    trace = poutine.trace(conditioned).get_trace(data.x)
    assert float(truth.log_joint(data.z, data.x).sum()) == pytest.approx(
        float(trace.log_prob_sum()), rel=1e-5
    )


def test_figure8_crosses_itself_at_the_origin():
    f = zoo.model("figure8").mean
    assert torch.allclose(f(torch.zeros(1, 1)), torch.zeros(1, 2), atol=1e-6)
    ends = f(torch.tensor([[-8.0], [8.0]]))  # u -> 0.6 pi and 2.4 pi: the ends near the origin
    assert ends.norm(dim=-1).max() < 0.3


def test_clusters_plateaus_are_the_three_centres():
    f = zoo.model("clusters", scale=1.0).mean
    z = torch.tensor([[-3.0], [0.0], [3.0]])  # middle of each third of the prior
    angles = torch.tensor([math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)])
    centres = torch.stack((angles.cos(), angles.sin()), -1)
    assert torch.allclose(f(z), centres, atol=1e-3)
    assert torch.allclose(zoo.model("clusters").mean(z), 5.0 * centres, atol=5e-3)  # the default scale


def test_quadratic_is_symmetric_with_range_quarter():
    f = zoo.model("quadratic").mean
    z = torch.linspace(-4, 4, 101)[:, None]
    assert torch.allclose(f(z), f(-z), atol=1e-7)
    assert float(f(z).max()) <= 0.25 and float(f(torch.zeros(1, 1))) == 0.0


def test_linear_gaussian_closed_forms_match_samples():
    truth = LinearGaussian()
    data = truth.sample(20000, seed=0)
    marg = truth.marginal()
    assert torch.allclose(data.x.mean(0), marg.mean, atol=0.03)
    assert torch.allclose(torch.cov(data.x.T), marg.covariance_matrix, atol=0.05)
    # z - E[z | x] has the posterior covariance, the same for every x
    post = truth.posterior(data.x)
    resid = data.z - post.mean
    assert torch.allclose(torch.cov(resid.T), post.covariance_matrix[0], atol=0.01)
    assert truth.mean_field_gap() > 0.05  # the default posterior is correlated


@pytest.mark.parametrize("name", ["figure8", "clusters"])
def test_scale_multiplies_the_decoder_and_shifts_log_px_by_d_log_scale(name):
    from pyrofail.analysis.reference import grid

    base = zoo.model(name, noise_scale=0.1, scale=1.0)
    scaled = zoo.model(name, noise_scale=0.3, scale=3.0)
    z = torch.linspace(-3, 3, 13)[:, None]
    assert torch.allclose(scaled.mean(z), 3.0 * base.mean(z), atol=1e-6)
    # x -> 3x maps one process onto the other: log p(3x) = log p(x) - D log 3, exactly
    x = base.sample(50, seed=0).x
    lp, lp_scaled = grid.grid_posterior(base, x).log_px, grid.grid_posterior(scaled, 3.0 * x).log_px
    assert torch.allclose(lp_scaled, lp - 2 * math.log(3.0), atol=1e-4)


@pytest.mark.parametrize(
    ("name", "noise", "scale", "entropy"),
    [("figure8", 0.06, 0.6, -0.405), ("clusters", 1.05, 5.0, 4.258)],
)
def test_defaults_are_the_calibrated_constants(name, noise, scale, entropy):
    """The defaults calibrated against Table 1 of Yacoby et al. (docs/results.md):
    the truth's entropy H = -E log p(x) by quadrature, which a well-fit IWAE's test bound reaches."""
    from pyrofail.analysis.reference import grid

    truth = zoo.model(name)
    assert float(truth.noise_scale) == pytest.approx(noise)
    assert zoo.entry("model", name).meta["scale"] == scale
    lp = grid.grid_posterior(truth, truth.sample(2000, seed=3).x).log_px
    assert -float(lp.mean()) == pytest.approx(entropy, abs=0.01)
