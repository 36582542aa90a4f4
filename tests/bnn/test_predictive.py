"""The posterior predictive against hand computations and exact Gaussian mixtures."""

import math

import pytest
import torch

from pyrofail.bnn.posterior import BNNPosterior, Scaling
from pyrofail.bnn.predictive import log_likelihood_inferred, predictive_draws, predictive_summary
from tests.bnn.exact import linear_net, linear_weights, mixture_cdf, mixture_log_density

DRAWS = [(1.5, 0.5, -0.2), (0.4, -1.0, 0.3)]  # (a, b, c): f = a z + b x + c


def _w(draws=DRAWS):
    return torch.stack([linear_weights(*d) for d in draws])


def test_log_mean_exp_over_draws_by_hand():
    # latents pinned at 0: log p(y | x) = log (1/2) [N(y; b1 x + c1, s^2) + N(y; b2 x + c2, s^2)]
    net = linear_net(noise_scale=0.3, latent_scale=1e-9)
    x, y = torch.tensor([[0.5], [-1.0]]), torch.tensor([0.1, 1.2])
    out = predictive_summary(net, _w(), x, y, num_z=3)
    for m in range(2):
        xm, ym = float(x[m, 0]), float(y[m])
        dens = [
            math.exp(-0.5 * ((ym - b * xm - c) / 0.3) ** 2) / (0.3 * math.sqrt(2 * math.pi))
            for _, b, c in DRAWS
        ]
        assert float(out["log_lik"][m]) == pytest.approx(math.log(sum(dens) / 2), abs=1e-5)
        assert float(out["mean"][m]) == pytest.approx(sum(b * xm + c for _, b, c in DRAWS) / 2, abs=1e-6)


def test_latents_integrate_out_to_the_exact_mixture():
    net = linear_net(noise_scale=0.2, latent_scale=0.8)
    x = torch.tensor([[-1.0], [0.0], [0.7], [2.0]])
    y = torch.tensor([0.5, -0.8, 1.9, -1.5])
    out = predictive_summary(net, _w(), x, y, num_z=20000, seed=3)
    exact = mixture_log_density(y, x[:, 0], DRAWS, net)
    assert torch.allclose(out["log_lik"], exact, atol=0.02)
    assert torch.allclose(out["pit"], mixture_cdf(y, x[:, 0], DRAWS, net), atol=0.01)
    assert torch.allclose(out["mean"], (0.5 * x[:, 0] - 0.2 - 1.0 * x[:, 0] + 0.3) / 2, atol=0.02)
    # seeded, and independent of the global state
    torch.manual_seed(99)
    again = predictive_summary(net, _w(), x, y, num_z=20000, seed=3)
    assert torch.equal(again["log_lik"], out["log_lik"])


def test_reconstruction_density_with_inferred_latents_by_hand():
    net = linear_net(noise_scale=0.5)
    x, y = torch.tensor([[1.0], [-2.0]]), torch.tensor([0.3, -0.4])
    z = torch.tensor([[0.2, -1.0], [1.5, 0.0]])  # (S, N)
    got = log_likelihood_inferred(net, _w(), z, x, y)
    for n in range(2):
        dens = [
            math.exp(-0.5 * ((float(y[n]) - a * float(z[s, n]) - b * float(x[n, 0]) - c) / 0.5) ** 2)
            / (0.5 * math.sqrt(2 * math.pi))
            for s, (a, b, c) in enumerate(DRAWS)
        ]
        assert float(got[n]) == pytest.approx(math.log(sum(dens) / 2), abs=1e-5)


def test_the_posterior_predicts_in_the_users_units():
    # f = z in standardised units: y_std ~ N(0, s_z^2 + sigma^2), so y ~ N(3, 4 (s_z^2 + sigma^2))
    net = linear_net(noise_scale=0.5, latent_scale=1.0)
    w = linear_weights(1.0, 0.0, 0.0).expand(3, -1)
    scaling = Scaling(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor(3.0), torch.tensor(2.0))
    post = BNNPosterior(
        net, w, torch.zeros(3, 5), torch.zeros(5), torch.zeros(5, 1), torch.zeros(5), scaling, "test"
    )
    y = torch.tensor([3.0, 5.0, -1.0])
    var = 4 * (1.0 + 0.25)
    exact = -0.5 * (y - 3) ** 2 / var - 0.5 * math.log(2 * math.pi * var)
    out = post.predictive_summary(torch.zeros(3, 1), y, num_z=20000)
    assert torch.allclose(out["log_lik"], exact, atol=0.02)
    draws = post.predictive(torch.zeros(1, 1), num_z=20000)
    assert float(draws.mean()) == pytest.approx(3.0, abs=0.05)
    assert float(draws.std()) == pytest.approx(math.sqrt(var), rel=0.02)


def test_predictive_draws_follow_the_mixture():
    net = linear_net(noise_scale=0.2, latent_scale=0.8)
    draws = predictive_draws(net, _w(), torch.tensor([[1.0]]), num_z=20000, seed=1)[:, 0]
    # the mixture's CDF at the draws is uniform: its mean is 1/2 and variance 1/12
    u = mixture_cdf(draws, 1.0, DRAWS, net)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(u.var()) == pytest.approx(1 / 12, abs=0.005)
    noiseless = predictive_draws(net, _w(), torch.tensor([[1.0]]), num_z=5, seed=1, noise=False)
    assert noiseless.shape == (10, 1)
