"""The spread objective against closed forms: Gaussian convolution adds variances, the
enumerated and the reparameterised bounds by hand, and a bound that stays finite as the
variance of an empty direction goes to zero."""

import math

import pyro.distributions as dist
import pytest
import torch

import pyrofail as pf
from pyrofail import zoo
from pyrofail.guides import BernoulliLatentGuide, MeanFieldGuide
from pyrofail.models import HeteroscedasticDecoder, LatentGaussian, LinearGaussian
from pyrofail.models.degenerate_line import DegenerateNormal
from pyrofail.nn import MLP
from pyrofail.objectives.spread import enumerate_latent, spread_bound, spread_likelihood
from tests.guides.exact import ExactPosteriorGuide


def test_spread_likelihood_is_the_gaussian_convolution():
    """N(mu, sigma^2) * N(0, s^2) = N(mu, sigma^2 + s^2), against a numerical convolution."""
    mu, sigma, s, y = 0.3, 0.2, 0.5, 0.9
    p = spread_likelihood(dist.Normal(torch.tensor([mu]), sigma).to_event(1), s)
    closed = float(p.log_prob(torch.tensor([y])))
    assert closed == pytest.approx(float(dist.Normal(mu, math.hypot(sigma, s)).log_prob(torch.tensor(y))))
    x = torch.linspace(mu - 10 * sigma, mu + 10 * sigma, 200_001, dtype=torch.float64)
    integrand = dist.Normal(mu, sigma).log_prob(x).exp() * dist.Normal(x, s).log_prob(torch.tensor(y)).exp()
    assert math.log(float(torch.trapezoid(integrand, x))) == pytest.approx(closed, abs=1e-5)
    # a point mass (sigma = 0) spreads to N(mu, s^2)
    q = spread_likelihood(DegenerateNormal(torch.tensor([mu, 0.0]), torch.tensor([sigma, 0.0])), s)
    expected = dist.Normal(mu, math.hypot(sigma, s)).log_prob(torch.tensor(y)) + dist.Normal(0.0, s).log_prob(
        torch.tensor(0.1)
    )
    assert float(q.log_prob(torch.tensor([y, 0.1]))) == pytest.approx(float(expected), rel=1e-6)
    assert spread_likelihood(p, 0.0) is p


def test_bernoulli_likelihood_and_negative_spread_are_usage_errors():
    with pytest.raises(pf.UsageError, match="Gaussian likelihood"):
        spread_likelihood(dist.Bernoulli(torch.full((2,), 0.5)).to_event(1), 0.1)
    with pytest.raises(pf.UsageError, match="spread=-0.1"):
        zoo.objective("spread", spread=-0.1)


def test_enumerated_bound_matches_hand_computation():
    """A Bernoulli guide is summed over exactly: sum_z q(z) [log p(z) + log p~(y|z) - log q(z)]
    at y = x + s eps, with the same eps."""
    torch.manual_seed(0)
    model = HeteroscedasticDecoder(1, 2, hidden=(6,), prior="bernoulli")
    guide = BernoulliLatentGuide(1, 2, hidden=(6,))
    x, s = torch.randn(5, 2), 0.3
    torch.manual_seed(7)
    value = spread_bound(model.model, guide, x, s)
    torch.manual_seed(7)
    y = x + s * torch.randn_like(x)
    with torch.no_grad():
        q1 = torch.sigmoid(guide.encoder(y))[:, 0]
        total = 0.0
        for z, qz in ((0.0, 1 - q1), (1.0, q1)):
            zz = torch.full((5, 1), z)
            mu, var = model.mean(zz), model.log_variance(zz).exp()
            log_lik = dist.Normal(mu, (var + s**2).sqrt()).log_prob(y).sum(-1)
            total = total + qz * (math.log(0.5) + log_lik - qz.log())
    assert torch.allclose(value.detach(), total, atol=1e-5)


def test_reparameterised_bound_of_the_exact_spread_posterior_is_log_p():
    """For probabilistic PCA the spread model is PPCA with variance sigma^2 + s^2; with the
    guide at its exact posterior the bound equals log p~(y) for every draw."""
    truth, s = LinearGaussian(), 0.4
    spread_truth = LinearGaussian(noise_scale=math.hypot(0.5, s))
    x = truth.sample(6, seed=0).x
    torch.manual_seed(3)
    value = spread_bound(truth.model, ExactPosteriorGuide(spread_truth), x, s)
    torch.manual_seed(3)
    y = x + s * torch.randn_like(x)
    assert torch.allclose(value, spread_truth.marginal().log_prob(y), atol=1e-4)


def test_bound_stays_finite_as_the_empty_variance_goes_to_zero():
    """On data with x_2 = 0 the plain bound grows like -log sigma_2 without end; the spread
    bound converges (its variance is sigma_2^2 + s^2 >= s^2)."""
    x = zoo.model("degenerate_line_continuous").sample(50, seed=0).x
    guide = MeanFieldGuide(1, 2, hidden=(6,))

    def bound(sigma2, s):
        torch.manual_seed(1)  # the same decoder, guide draws and noise every time
        model = LatentGaussian(MLP((1, 6, 2)), 1, 2, [0.1, sigma2], noise_per_feature=True)
        with torch.no_grad():
            model.decoder.weights[-1][:, 1] = 0.0  # the decoder puts x_2 exactly at 0
            model.decoder.biases[-1][1] = 0.0
        return float(spread_bound(model.model, guide, x, s).detach().mean())

    plain = [bound(v, 0.0) for v in (1e-2, 1e-4, 1e-6)]
    assert plain[1] - plain[0] == pytest.approx(math.log(100), rel=1e-4)
    assert plain[2] - plain[1] == pytest.approx(math.log(100), rel=1e-4)
    spread = [bound(v, 0.1) for v in (1e-2, 1e-4, 1e-6)]
    assert abs(spread[2] - spread[1]) < 1e-4 < abs(spread[1] - spread[0])


def test_a_continuous_guide_for_a_discrete_latent_is_a_usage_error():
    model = HeteroscedasticDecoder(1, 2, hidden=(4,), prior="bernoulli")
    with pytest.raises(pf.UsageError, match="discrete but the guide's is continuous"):
        spread_bound(model.model, MeanFieldGuide(1, 2, hidden=(4,)), torch.zeros(3, 2), 0.1)


def test_enumerate_latent():
    q = dist.Bernoulli(torch.full((3, 2), 0.3)).to_event(1)
    states = enumerate_latent(q)
    assert states.shape == (4, 3, 2)
    assert float(q.log_prob(states).exp().sum(0).sub(1).abs().max()) < 1e-6
    assert enumerate_latent(dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)) is None


@pytest.mark.parametrize("restarts", [1, 2])
def test_per_point_and_fit(restarts):
    """per_point is the mean over draws of the bound with its error; fit trains the blog VAE."""
    truth = zoo.model("degenerate_line")
    data = truth.sample(120, seed=0)
    torch.manual_seed(0)
    fit = pf.fit(
        data.x,
        model=HeteroscedasticDecoder(1, 2, hidden=(8,), prior="bernoulli"),
        guide=BernoulliLatentGuide(1, 2, hidden=(8,)),
        objective="spread",
        objective_options={"spread": 0.2},
        noise_scale=1.0,
        restarts=restarts,
        steps=20,
        eval_every=10,
    )
    est = fit.objective.per_point(fit.model, fit.guide, data.x[:10], num_samples=50)
    assert est.value.shape == (10,) and torch.all(est.stderr > 0) and torch.isfinite(est.value).all()
    assert fit.objective.trained_on(fit.guide).startswith("spread ELBO, s = 0.2")
