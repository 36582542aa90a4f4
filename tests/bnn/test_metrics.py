"""evaluate and dependence_r2 on posteriors whose predictive is known exactly."""

import math

import pytest
import torch

from pyrofail.bnn.metrics import dependence_r2, evaluate, mean_estimate
from pyrofail.bnn.posterior import BNNPosterior, Scaling
from tests.bnn.exact import linear_net, linear_weights, mixture_cdf


def _posterior(n_train=200, seed=0):
    """f = z + 0.5 x exactly, one weight draw repeated: y | x ~ N(0.5 x, s_z^2 + sigma^2); the
    training latents are set to the values that generated y, so the reconstruction is exact."""
    net = linear_net(noise_scale=0.3, latent_scale=1.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train, 1, generator=g)
    z = torch.randn(n_train, generator=g)
    y = z + 0.5 * x[:, 0] + 0.3 * torch.randn(n_train, generator=g)
    w = linear_weights(1.0, 0.5, 0.0).expand(4, -1)
    post = BNNPosterior(net, w, z.expand(4, -1), z, x, y, Scaling.identity(1), "exact")
    return post, net


def test_evaluate_against_the_exact_predictive():
    post, net = _posterior()
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(400, 1, generator=g)
    yt = 0.5 * xt[:, 0] + math.sqrt(1.09) * torch.randn(400, generator=g)
    ev = evaluate(post, xt, yt, num_z=500, num_draws=4)
    var = 1.0 + 0.09
    exact = -0.5 * (yt - 0.5 * xt[:, 0]) ** 2 / var - 0.5 * math.log(2 * math.pi * var)
    # 2000 stratified latent draws per point: exact to 1e-2 nats but at the outputs so far out
    # that the latent they need lies beyond the last stratum (3.5 sd: a point or two in 400)
    error = ev.per_point["test_ll"] - exact
    assert float(error.abs().quantile(0.98)) < 0.01 and abs(float(error.mean())) < 0.02
    assert ev["test_ll"].mean == pytest.approx(float(ev.per_point["test_ll"].mean()))
    pit = mixture_cdf(yt, xt[:, 0], [(1.0, 0.5, 0.0)], net)
    assert float((ev.per_point["test_pit"] - pit).abs().max()) < 0.03
    # data drawn from the predictive itself: coverage 0.9 and RMSE sqrt(var), within 3 standard errors
    assert abs(ev["coverage90"].mean - 0.9) < 3 * ev["coverage90"].stderr
    assert abs(ev["rmse"].mean - math.sqrt(var)) < 3 * ev["rmse"].stderr
    # reconstruction with the true latents: N(y; f, sigma^2) exactly
    resid = post.y_train - post.z_mean - 0.5 * post.x_train[:, 0]
    train = -0.5 * resid**2 / 0.09 - 0.5 * math.log(2 * math.pi * 0.09)
    assert ev["train_ll"].mean == pytest.approx(float(train.mean()), abs=1e-4)
    assert ev["gap"].mean == pytest.approx(ev["train_ll"].mean - ev["test_ll"].mean)
    assert ev["gap"].stderr == pytest.approx(math.hypot(ev["train_ll"].stderr, ev["test_ll"].stderr))
    # the true latents are independent of x: no dependence to see, and they sit exactly (sd 0)
    assert abs(ev["hsic"].mean) < 3 * ev["hsic"].stderr
    assert ev["r2_z"].mean < 3 * ev["r2_z"].stderr
    assert ev["z_sd"].mean == 0.0
    assert ev.as_dict()["test_ll"]["mean"] == ev["test_ll"].mean


def test_latents_that_are_a_function_of_x_are_seen_as_dependent():
    post, _ = _posterior()
    leaky = BNNPosterior(
        post.network,
        post.w,
        torch.sin(2 * post.x_train[:, 0]).expand(4, -1),
        torch.sin(2 * post.x_train[:, 0]),
        post.x_train,
        post.y_train,
        post.scaling,
        "leaky",
    )
    ev = evaluate(leaky, post.x_train[:50], post.y_train[:50], num_z=10, num_draws=4)
    assert ev["hsic"].mean > 10 * ev["hsic"].stderr
    assert ev["r2_z"].mean > 0.9


def test_dependence_r2_and_its_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 1, generator=g)
    noise = torch.randn(400, generator=g)
    none = dependence_r2(x, noise)
    assert none.mean < 2 * none.stderr and none.mean > -0.3
    half = dependence_r2(x, x[:, 0] + noise)  # population R^2 = 1/2, less the k-NN's own error
    assert 0.35 < half.mean < 0.55 and 0.01 < half.stderr < 0.08
    assert mean_estimate(torch.tensor([1.0, 3.0])).stderr == pytest.approx(1.0)
