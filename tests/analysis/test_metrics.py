import math

import pyro.distributions as dist
import pytest
import torch

from pyrofail import zoo
from pyrofail.analysis import metrics
from pyrofail.guides.base import AmortizedGuide
from pyrofail.models import LinearGaussian
from tests.guides.exact import ExactPosteriorGuide


class GaussianChannel(AmortizedGuide):
    """q(z | x) = N(a x, s^2): with x ~ N(0, 1), I(x; z) = 0.5 log(1 + a^2 / s^2)."""

    def __init__(self, a, s):
        super().__init__()
        self.a, self.s, self.latent_dim, self.data_dim, self.restarts = a, s, 1, 1, None

    def distribution(self, x):
        return dist.Normal(self.a * x, self.s).to_event(1)


def test_mutual_information_of_a_gaussian_channel():
    x = torch.randn(3000, 1, generator=torch.Generator().manual_seed(0))
    for a, s in ((1.0, 0.5), (2.0, 0.1)):
        exact = 0.5 * math.log(1 + a**2 / s**2)
        mi = metrics.mutual_information(GaussianChannel(a, s), x, num_samples=20)
        # the empirical aggregate (a mixture of 3000 components) is close to N(0, a^2 + s^2)
        assert float(mi[0]) == pytest.approx(exact, abs=0.05)
        assert float(mi[0]) <= math.log(3000)


def test_log_marginal_methods_agree_on_linear_gaussian():
    truth = LinearGaussian()
    x = truth.sample(30, seed=2).x
    exact = truth.marginal().log_prob(x)
    grid = metrics.log_px(truth, x, method="grid")
    assert torch.allclose(grid["per_point"].float(), exact, atol=1e-4)
    guide = ExactPosteriorGuide(truth, scale_factor=1.3)
    est = metrics.log_px(truth, x, guide=guide, method="is", num_samples=4000)
    assert torch.all((est["per_point"] - exact).abs() < 5 * est["stderr"] + 1e-3)


def test_mleo_of_the_truth_against_itself_is_zero():
    truth = zoo.model("clusters")
    out = metrics.mleo(truth, truth, n=300)
    assert abs(out["mean"]) < 1e-6


def test_summarize_is_reproducible():
    truth = LinearGaussian()
    x = truth.sample(100, seed=0).x
    guide = ExactPosteriorGuide(truth, scale_factor=1.2)
    a = metrics.summarize(truth, guide, x, truth=truth, is_samples=100)
    b = metrics.summarize(truth, guide, x, truth=truth, is_samples=100)
    assert a == b
    assert a["pmo_gap"] == pytest.approx(
        float(torch.distributions.kl_divergence(guide.distribution(x), truth.posterior(x)).mean()),
        abs=0.02,
    )
