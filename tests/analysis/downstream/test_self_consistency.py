"""Self-consistency metrics against closed forms on a one-dimensional linear-Gaussian model,
whose exact posterior is N(x / 2, 1 / 2)."""

import math

import pyro.distributions as dist
import pytest
import torch

import pyrofail as pf
from pyrofail.analysis.downstream.attacks import attack_encoder
from pyrofail.analysis.downstream.self_consistency import chain_drift, consistency, elbo_cost, linear_probe
from pyrofail.guides.base import AmortizedGuide
from pyrofail.models import LinearGaussian


class Affine(AmortizedGuide):
    """q(z | x) = N(a x + b, s^2)."""

    latent_dim, data_dim, restarts = 1, 1, None

    def __init__(self, a=0.5, b=0.0, s=0.5**0.5):
        super().__init__()
        self.a, self.b, self.s = a, b, s

    def distribution(self, x):
        return dist.Normal(self.a * x + self.b, self.s).to_event(1)


TRUTH = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)


def test_consistency_distance_closed_form_and_exact_posterior():
    """x = z, m(x) = a x + b: |z - m| = |(1 - a) z - b|; for b = 0, E = (1 - a) sqrt(2 / pi)."""
    out = consistency(TRUTH, Affine(a=0.5), 4000, seed=0, exact=True)
    assert abs(out["mean"] - 0.5 * math.sqrt(2 / math.pi)) < 4 * out["stderr"]
    z = TRUTH.sample(4000, seed=0).z[:, 0]
    assert torch.allclose(out["per_point"], 0.5 * z.abs(), atol=1e-6)
    # the guide is the exact posterior: its excess over the ideal encoder is zero
    assert abs(out["excess"]["mean"]) < 1e-4
    worse = consistency(TRUTH, Affine(a=0.5, b=0.3), 4000, seed=0, exact=True)
    assert worse["excess"]["mean"] > 4 * worse["excess"]["stderr"]


def test_chain_drift_closed_form():
    """z_t = a^t z_0: |z_t - z_0| = (1 - a^t) |z_0|, x likewise."""
    out = chain_drift(TRUTH, Affine(a=0.8), 300, steps=4, seed=2)
    z0 = TRUTH.sample(300, seed=2).z[:, 0].abs()
    for t in range(4):
        assert torch.allclose(out["latent"][:, t], (1 - 0.8 ** (t + 1)) * z0, atol=1e-5)
    assert out["data_mean"] == pytest.approx(out["latent_mean"], rel=1e-5)  # f(z) = z


def test_linear_probe_accuracy_under_attack():
    """Clean accuracy of two separated clusters is 1; under attack it is the accuracy of the same
    classifier on the attacked points, with the binomial standard error."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(100, 1, generator=g) * 0.1 - 1, torch.randn(100, 1, generator=g) * 0.1 + 1])
    y = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    guide = Affine(a=1.0, s=0.1)
    out = linear_probe(guide, x, y, x, y, eps=(0.0, 1.2), steps=10, seed=3)
    assert out["accuracy"][0] == 1.0 and out["stderr"][0] == 0.0
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        x.double().numpy(), y.numpy()
    )
    moved = attack_encoder(guide, x, 1.2, objective="mean", steps=10, seed=3)["x_adv"]
    acc = float((torch.as_tensor(clf.predict(moved.double().numpy())) == y).double().mean())
    assert out["accuracy"][1] == pytest.approx(acc) and 0.0 < acc < 1.0
    assert out["stderr"][1] == pytest.approx(math.sqrt(acc * (1 - acc) / 200))
    assert out["shift"][1] == pytest.approx(1.2, rel=1e-4)  # |m(x + d) - m(x)| = |d| = eps
    with pytest.raises(pf.UsageError, match="one label per row"):
        linear_probe(guide, x, y[:5], x, y)


def test_elbo_cost_is_the_kl_of_the_worse_guide():
    """Both guides on the same model: the cost is the extra KL to the posterior N(x/2, 1/2)."""
    x = TRUTH.sample(300, seed=4).x
    out = elbo_cost((TRUTH, Affine()), (TRUTH, Affine(b=0.4)), x, num_samples=200)
    exact = 0.4**2 / (2 * 0.5)  # KL(N(m + 0.4, v) || N(m, v))
    assert abs(out["cost"] - exact) < 4 * out["cost_stderr"]
