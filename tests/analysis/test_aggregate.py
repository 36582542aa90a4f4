"""The aggregate posterior's KL with its finite-sample bias removed, against a case whose truth is
0 (a model's own samples: their population aggregate is the prior) and a linear-Gaussian case
with a closed-form positive value; the plug-in (analysis.metrics.aggregate_posterior_kl) beside
it, biased upwards in both."""

import math

import numpy as np
import pytest
import torch

from pyrofail import zoo
from pyrofail.analysis.aggregate import aggregate_kl, aggregate_kl_terms
from pyrofail.errors import UsageError
from pyrofail.models import LinearGaussian

REPLICATES = 8


def replicate(model, sample, n):
    """Corrected estimates, their standard errors and plug-ins over independent data sets."""
    rows = [aggregate_kl_terms(model, sample(n, 100 + r), seed=10 * r) for r in range(REPLICATES)]
    est = np.array([r["estimate"].mean for r in rows])
    se = np.array([r["estimate"].stderr for r in rows])
    plug = np.array([r["plug_in"] for r in rows])
    return est, se, plug


@pytest.mark.parametrize("name", ["figure8", "linear"])
def test_the_truth_zero_is_recovered_on_a_models_own_samples(name):
    """Over 8 data sets of 400 points the corrected estimates average to 0 within 3 standard
    errors of that average; the plug-in is above 0 by far more (its bias: 0.009 nats on
    figure8)."""
    model = zoo.model("figure8") if name == "figure8" else LinearGaussian(latent_dim=1, data_dim=2, seed=3)
    est, se, plug = replicate(model, lambda n, s: model.sample(n, seed=s).x, 400)
    spread = est.std(ddof=1) / math.sqrt(REPLICATES)
    assert abs(est.mean()) < 3 * spread
    assert plug.mean() > est.mean() + 5 * spread
    # each reported standard error covers the spread between data sets (the jackknife's
    # variance is conservative: within a factor 0.7 to 2.5 of it)
    assert 0.7 < np.sqrt(np.mean(se**2)) / est.std(ddof=1) < 2.5


def test_a_closed_form_positive_value_is_recovered():
    """p(z | x) = N(a (x - b), s^2) for probabilistic PCA with K = D = 1; on data
    x ~ N(b + shift, spread) the population aggregate is N(a shift, s^2 + a^2 spread), whose KL
    from N(0, 1) is (m^2 + u - 1 - log u) / 2."""
    w, sigma, b, shift, spread = 1.5, 0.5, 0.2, 0.8, 2.0
    model = LinearGaussian(latent_dim=1, data_dim=1, noise_scale=sigma, weight=[[w]], bias=[b])
    post_var = 1.0 / (1.0 + w * w / sigma**2)
    a = post_var * w / sigma**2
    m, u = a * shift, post_var + a * a * spread
    exact = 0.5 * (m * m + u - 1 - math.log(u))  # 0.124 nats

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        return b + shift + math.sqrt(spread) * torch.randn(n, 1, generator=g)

    est, _, plug = replicate(model, data, 400)
    spread_est = est.std(ddof=1) / math.sqrt(REPLICATES)
    assert abs(est.mean() - exact) < 3 * spread_est + 2e-3  # 2e-3: the grid's error
    # the plug-in is above by its bias, 0.010 nats here (paired over the same data sets)
    gap = plug - est
    assert gap.mean() > 3 * gap.std(ddof=1) / math.sqrt(REPLICATES)


def test_k2_and_the_jackknife_alone():
    """On two_factor_smooth's own samples (K = 2, narrow posteriors) the jackknife leaves a
    residual bias that the reference sets remove; reference=0 gives the jackknife alone."""
    truth = zoo.model("two_factor_smooth")
    x = truth.sample(300, seed=5).x
    terms = aggregate_kl_terms(truth, x, reference=3, seed=1)
    alone = aggregate_kl(truth, x, reference=0)
    assert alone == terms["jackknife"] and terms["reference_bias"].n == 3
    assert terms["plug_in"] > alone.mean > 0  # the jackknife removes most, not all, of the bias
    assert terms["reference_bias"].mean > 0.01
    est = terms["estimate"]
    assert est.mean == pytest.approx(alone.mean - terms["reference_bias"].mean)
    assert abs(est.mean) < 3 * est.stderr


def test_bad_input_raises_usage_error():
    with pytest.raises(UsageError, match="latent_dim <= 2"):
        aggregate_kl(LinearGaussian(latent_dim=3, data_dim=4), torch.zeros(5, 4))
    with pytest.raises(UsageError, match="expected \\(points >= 3, 3\\)"):
        aggregate_kl(LinearGaussian(), torch.zeros(5, 2))
    with pytest.raises(UsageError, match="reference"):
        aggregate_kl(LinearGaussian(), torch.zeros(5, 3), reference=-1)


def test_docstring_examples_run():
    import doctest

    from pyrofail.analysis import aggregate

    result = doctest.testmod(aggregate)
    assert result.attempted > 0 and result.failed == 0
