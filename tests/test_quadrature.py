"""The fixed-grid quadrature behind likelihood-before-inference against closed forms."""

import math

import pytest
import torch

import pyrofail as pf
from pyrofail import quadrature
from pyrofail.models import LinearGaussian


@pytest.mark.parametrize("k", [1, 2])
def test_log_px_is_the_closed_form_marginal(k):
    truth = LinearGaussian(latent_dim=k, data_dim=3, noise_scale=0.5, seed=1).double()
    x = truth.sample(20, seed=2).x.double()
    z, log_w = quadrature.nodes(k, spacing=0.02 if k == 1 else 0.05, dtype=torch.float64)
    assert torch.allclose(quadrature.rule_log_px(truth, x, z, log_w), truth.marginal().log_prob(x), atol=1e-6)


def test_aggregate_posterior_kl_is_the_closed_form_for_many_points():
    """p(z | x) = N(a (x - b), s^2) for probabilistic PCA; over data x ~ N(b + c, v) the
    aggregate posterior tends to N(a c, s^2 + a^2 v), whose KL from N(0, 1) is
    (m^2 + u - 1 - log u) / 2: the grid's KL of the empirical aggregate must match it."""
    truth = LinearGaussian(latent_dim=1, data_dim=1, noise_scale=0.5, weight=[[1.5]], bias=[0.2]).double()
    w, s2 = 1.5, 0.25
    post_var = 1.0 / (1.0 + w * w / s2)
    a = post_var * w / s2
    shift, spread = 0.8, 2.0  # the data are shifted and wider than the model's p(x)
    # the data at the quantiles of N(b + shift, spread): an empirical law that is the Gaussian's
    levels = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    x = (0.2 + shift + math.sqrt(spread) * torch.special.ndtri(levels))[:, None]
    z, log_w = quadrature.nodes(1, spacing=0.01, radius=8.0, dtype=torch.float64)
    lj = quadrature.log_joint_on_nodes(truth, x, z, log_w)
    m, u = a * shift, post_var + a * a * spread
    exact = 0.5 * (m * m + u - 1 - math.log(u))
    assert float(quadrature.aggregate_kl(lj, z, log_w)) == pytest.approx(exact, rel=2e-3)


def test_the_batched_model_gives_each_restarts_own_values():
    truth = pf.zoo.model("figure8")
    x = truth.sample(30, seed=0).x
    from pyrofail.nn import stack_restarts, take_restart
    from pyrofail.training import build

    models = [build.learned_model(1, 2, 0.14, hidden=(8,)) for _ in range(3)]
    batched = stack_restarts(models)
    z, log_w = quadrature.nodes(1)
    together = quadrature.rule_log_px(batched, x, z, log_w)
    for r in range(3):
        alone = quadrature.rule_log_px(take_restart(batched, r), x, z, log_w)
        assert torch.allclose(together[r], alone, atol=1e-5)
