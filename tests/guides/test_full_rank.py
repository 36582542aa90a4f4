"""Full-rank and mean-field guides against the closed-form posterior of a linear-Gaussian process.

With a linear encoder (``hidden=()``) both families contain their best approximation exactly:
the full-rank family the posterior itself (KL 0), the mean-field family the Gaussian with the
posterior mean and variances :math:`1/\\Lambda_{ii}` (KL ``mean_field_gap()``, 0.318 nats for
the default process). What is left is optimisation error, which the tolerances bound.
"""

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import pyrofail as pf
from pyrofail.models import LinearGaussian

FIT = dict(restarts=2, steps=1000, hidden=(), lr=1e-2, batch_size=100, seed=0)


@pytest.fixture(scope="module")
def process():
    truth = LinearGaussian()
    return truth, truth.sample(1000, seed=0).x, truth.sample(500, seed=1).x


def _kl_per_point(q, truth, x):
    if not isinstance(q, MultivariateNormal):  # the diagonal family as a full Gaussian
        q = MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    return float(kl_divergence(q, truth.posterior(x)).mean())


@pytest.mark.slow
def test_full_rank_guide_recovers_the_posterior(process):
    truth, x, x_test = process
    fit = pf.fit(x, model=truth, learn_model=False, guide="full_rank", **FIT)
    with torch.no_grad():
        assert _kl_per_point(fit.guide.distribution(x_test), truth, x_test) < 0.01


@pytest.mark.slow
def test_mean_field_guide_pays_the_closed_form_gap(process):
    truth, x, x_test = process
    fit = pf.fit(x, model=truth, learn_model=False, guide="mean_field", **FIT)
    with torch.no_grad():
        kl = _kl_per_point(fit.guide.distribution(x_test), truth, x_test)
    assert kl == pytest.approx(truth.mean_field_gap(), abs=0.01)


def test_full_rank_scale_tril_is_lower_triangular_with_a_positive_diagonal():
    g = pf.zoo.guide("full_rank", latent_dim=3, data_dim=2, hidden=(8,))
    with torch.no_grad():
        for p in g.parameters():
            p.add_(3 * torch.randn_like(p))  # large raw values: softplus keeps the diagonal > 0
        tril = g.distribution(torch.randn(40, 2)).scale_tril
    assert torch.equal(tril, tril.tril())
    assert (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert (tril.tril(-1).abs() > 0).any()  # correlations are reachable
