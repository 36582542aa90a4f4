"""The three inference methods: exact answers on Bayesian linear regression, tiny runs, seeding."""

import math

import pytest
import torch

from pyrofail import bnn, zoo
from pyrofail.bnn.hsic import gaussian_gram, hsic_jackknife
from pyrofail.errors import UsageError

SIGMA, S_W = 0.5, 1.0


def _linear_data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.rand(n, 1, generator=g) - 2
    y = 0.8 * x[:, 0] - 0.3 + SIGMA * torch.randn(n, generator=g)
    return x, y


def _blr(x, y):
    """The exact posterior of (slope, bias) under y = a x + b + N(0, sigma^2), (a, b) ~ N(0, s_w^2 I)."""
    phi = torch.cat((x, torch.ones_like(x)), 1).double()
    precision = phi.T @ phi / SIGMA**2 + torch.eye(2, dtype=torch.float64) / S_W**2
    cov = torch.linalg.inv(precision)
    mean = cov @ phi.T @ y.double() / SIGMA**2
    return mean, cov, precision


# The linear network (hidden=()) has flat weights (a, c, b): f = a x + c z + b. With s_z = 0.01 the
# latent's contribution c z (variance about s_w^2 s_z^2 = 1e-4 against sigma^2 = 0.25) barely
# moves the likelihood, and the model is Bayesian linear regression up to that variance.
S_Z = 0.01
LINEAR = {"hidden": (), "noise_scale": SIGMA, "weight_scale": S_W, "latent_scale": S_Z, "standardize": False}


@pytest.mark.slow
def test_nuts_on_a_tiny_linear_case_matches_bayesian_linear_regression():
    x, y = _linear_data()
    mean, cov, _ = _blr(x, y)
    post = bnn.infer(x, y, inference="nuts", seed=0, warmup=150, num_draws=400, **LINEAR)
    ab = post.w[:, [0, 2]].double()
    sd = cov.diagonal().sqrt()
    # 400 draws of a well-mixed chain: the means within a quarter of a posterior sd, the sds within 15%
    assert torch.all((ab.mean(0) - mean).abs() < 0.25 * sd), (ab.mean(0), mean)
    assert torch.allclose(ab.std(0), sd, rtol=0.15), (ab.std(0), sd)
    # the posterior predictive at new inputs: N(phi' mu, phi' Sigma phi + sigma^2 + s_w^2 s_z^2),
    # at outputs within 1.5 predictive sds of the mean (where a Monte Carlo error of a few
    # hundredths of a sd in the mean moves the log density by a few hundredths of a nat)
    xt = torch.tensor([[-3.0], [-1.0], [0.0], [1.5], [3.0]])
    phi = torch.cat((xt, torch.ones_like(xt)), 1).double()
    var = (phi @ cov * phi).sum(1) + SIGMA**2 + S_W**2 * S_Z**2
    yt = phi @ mean + torch.tensor([-1.5, 0.5, 0.0, 1.0, -0.5], dtype=torch.float64) * var.sqrt()
    exact = -0.5 * (yt - phi @ mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)
    got = post.predictive_summary(xt, yt.float(), num_z=5)["log_lik"].double()
    assert torch.allclose(got, exact, atol=0.05), (got, exact)


@pytest.mark.slow
def test_mean_field_vi_on_a_linear_case_finds_the_exact_means_and_precisions():
    # for a Gaussian target the mean-field optimum has the exact means and variances 1 / diag(precision)
    x, y = _linear_data()
    mean, cov, precision = _blr(x, y)
    post = bnn.infer(x, y, inference="mean_field", seed=0, steps=600, lr=0.05, num_particles=8, **LINEAR)
    loc = post.info["q"]["w_loc"][[0, 2]].double()
    scale = post.info["q"]["w_scale"][[0, 2]].double()
    sd = cov.diagonal().sqrt()
    assert torch.all((loc - mean).abs() < 0.15 * sd), (loc, mean)
    assert torch.allclose(scale, precision.diagonal().rsqrt(), rtol=0.1), (
        scale,
        precision.diagonal().rsqrt(),
    )


@pytest.fixture(scope="module")
def tiny():
    return zoo.entry("regression", "heteroscedastic").factory().splits(30, 20, seed=0)


TINY = {
    "nuts": {"warmup": 10, "num_draws": 20, "max_tree_depth": 3},
    "mean_field": {"steps": 40, "num_draws": 20},
    "noise_constrained": {"steps": 30, "num_draws": 20, "lams": (1.0, 10.0)},
}


@pytest.mark.parametrize("method", sorted(TINY))
def test_each_method_runs_on_a_tiny_case_with_finite_metrics(method, tiny):
    post = bnn.infer(tiny.x_train, tiny.y_train, inference=method, hidden=(8,), seed=0, **TINY[method])
    assert post.w.shape == (20, post.network.num_weights) and post.z.shape == (20, 30)
    ev = bnn.evaluate(post, tiny.x_test, tiny.y_test, num_z=5, hsic_draws=5)
    for name, est in ev.estimates.items():
        assert math.isfinite(est.mean) and math.isfinite(est.stderr) and est.stderr >= 0, name
    assert 0 <= ev["coverage90"].mean <= 1
    if method == "noise_constrained":
        assert post.info["lam"] == max(post.info["validation"], key=lambda v: post.info["validation"][v][0])


@pytest.mark.parametrize("method", ["mean_field", "nuts"])
def test_fits_are_seeded(method, tiny):
    opts = TINY[method]
    a = bnn.infer(tiny.x_train, tiny.y_train, inference=method, hidden=(4,), seed=1, **opts)
    torch.manual_seed(1234)  # the global state must not matter
    b = bnn.infer(tiny.x_train, tiny.y_train, inference=method, hidden=(4,), seed=1, **opts)
    c = bnn.infer(tiny.x_train, tiny.y_train, inference=method, hidden=(4,), seed=2, **opts)
    assert torch.equal(a.w, b.w) and torch.equal(a.z, b.z)
    assert not torch.equal(a.w, c.w)


@pytest.mark.slow
def test_the_penalty_lowers_the_dependence_between_inputs_and_inferred_latents():
    d = zoo.entry("regression", "heteroscedastic").factory().splits(120, 10, seed=1)
    opts = {"hidden": (8,), "seed": 0, "steps": 300, "num_draws": 20}
    free = bnn.infer(d.x_train, d.y_train, inference="mean_field", **opts)
    held = bnn.infer(d.x_train, d.y_train, inference="noise_constrained", lam=1000.0, **opts)
    k = gaussian_gram(free.scaling.x(free.x_train))

    def dependence(post):
        return hsic_jackknife(k, torch.stack([gaussian_gram(z) for z in post.z]).mean(0))

    (h_free, se_free), (h_held, se_held) = dependence(free), dependence(held)
    assert h_free - h_held > 2 * math.hypot(se_free, se_held), (h_free, se_free, h_held, se_held)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inference": "hmc"}, "inference 'hmc'"),
        ({"inference": "nuts", "steps": 10}, "option 'steps'"),
        ({"inference": "mean_field", "penalty": 1.0}, "option 'penalty'"),
        ({"inference": "mean_field", "steps": 0}, "steps=0"),
        ({"inference": "noise_constrained", "lams": (0.0,)}, "lams"),
        ({"inference": "noise_constrained", "lams": (1.0,), "val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, match, tiny):
    with pytest.raises(UsageError, match=match):
        bnn.infer(tiny.x_train, tiny.y_train, hidden=(4,), **kwargs)


def test_bad_data_are_usage_errors(tiny):
    with pytest.raises(UsageError, match="expected a tensor \\(N, D\\)"):
        bnn.infer(tiny.x_train[:, 0], tiny.y_train)
    with pytest.raises(UsageError, match="expected a tensor \\(30,\\)"):
        bnn.infer(tiny.x_train, tiny.y_train[:-1])
    with pytest.raises(UsageError, match="too few"):
        bnn.infer(tiny.x_train[:4], tiny.y_train[:4])
    y = tiny.y_train.clone()
    y[3] = float("nan")
    with pytest.raises(UsageError, match="finite"):
        bnn.infer(tiny.x_train, y)
