"""The objectives against closed forms and against a hand-written per-point IWAE."""

import math

import pytest
import torch

from pyrofail import bounds, zoo
from pyrofail.guides import MeanFieldGuide
from pyrofail.models import LatentGaussian, LinearGaussian
from pyrofail.nn import MLP
from tests.guides.exact import ExactPosteriorGuide


def _batched_vae(restarts=3, k=2, d=3):
    torch.manual_seed(1)
    model = LatentGaussian(MLP((k, 8, d), restarts=restarts), k, d, 0.3, restarts=restarts)
    guide = MeanFieldGuide(k, d, hidden=(8,), restarts=restarts)
    return model, guide


@pytest.mark.parametrize("restarts", [None, 3])
def test_iwae_equals_hand_written_per_point_iwae(restarts):
    """Pyro's RenyiELBO(alpha=0) under the restarts and data plates is the sum over
    (restart, point) of log-mean-exp of the importance weights, with the same draws."""
    model, guide = _batched_vae(restarts or 1)
    if restarts is None:
        from pyrofail.nn import take_restart

        model, guide = take_restart(model, 0), take_restart(guide, 0)
    x = torch.randn(7, 3)
    s = 16
    torch.manual_seed(123)
    pyro_loss = zoo.objective("iwae", num_particles=s).loss(model.model, guide, x)
    torch.manual_seed(123)
    with torch.no_grad():
        q = guide.distribution(x)
        z = q.rsample((s,))
        log_w = model.log_joint(z, x) - q.log_prob(z)  # (S, [R,] N)
    per_point = torch.logsumexp(log_w, 0) - math.log(s)
    assert pyro_loss == pytest.approx(-float(per_point.sum()), rel=1e-5, abs=1e-4)
    # the bound of the summed weights (plates not kept independent) is far from it
    pooled = torch.logsumexp(log_w.reshape(s, -1).sum(-1), 0) - math.log(s)
    assert abs(pyro_loss + float(pooled)) > 1.0


def test_elbo_matches_closed_form_on_linear_gaussian():
    """ELBO(x) = log p(x) - KL(q || p(z|x)) for a Gaussian q: both estimators agree with it
    within 4 Monte Carlo standard errors."""
    truth = LinearGaussian()
    x = truth.sample(5, seed=3).x
    guide = ExactPosteriorGuide(truth, scale_factor=1.5, shift=0.3)
    exact = truth.marginal().log_prob(x) - torch.distributions.kl_divergence(
        guide.distribution(x), truth.posterior(x)
    )
    est = bounds.elbo(truth, guide, x, num_samples=20000)
    assert torch.all((est.value - exact).abs() < 4 * est.stderr + 1e-6)
    objective = zoo.objective("elbo", num_particles=20000)
    pyro_value = -objective.loss(truth.model, guide, x) / 1.0
    se_total = float(est.stderr.pow(2).sum().sqrt())
    assert pyro_value == pytest.approx(float(exact.sum()), abs=4 * se_total)


def test_bounds_are_exact_with_the_exact_posterior():
    """With q = p(z|x) every weight equals p(x): ELBO = IWAE = log p(x), zero variance."""
    truth = LinearGaussian()
    x = truth.sample(6, seed=4).x
    guide = ExactPosteriorGuide(truth)
    log_px = truth.marginal().log_prob(x)
    assert torch.allclose(bounds.elbo(truth, guide, x, 8).value, log_px, atol=1e-4)
    assert torch.allclose(bounds.iwae(truth, guide, x, 8).value, log_px, atol=1e-4)


def test_iwae_bound_tightens_with_particles():
    """E[L_1] = ELBO <= E[L_10] <= E[L_100] <= log p(x) for a poor guide."""
    truth = LinearGaussian()
    x = truth.sample(50, seed=5).x
    guide = ExactPosteriorGuide(truth, scale_factor=0.5, shift=0.4)
    torch.manual_seed(0)
    vals = [float(bounds.iwae(truth, guide, x, s).value.mean()) for s in (1, 10, 100)]
    log_px = float(truth.marginal().log_prob(x).mean())
    assert vals[0] < vals[1] < vals[2] < log_px


def test_objective_options_are_checked():
    with pytest.raises(ValueError, match="num_particles"):
        zoo.objective("iwae", num_particles=0)
