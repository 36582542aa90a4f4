"""The three inference methods: exact answers on Bayesian linear regression, tiny runs, seeding."""

import math

import pytest
import torch

from pyrofail import bnn, zoo
from pyrofail.bnn import noise_constrained
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
NUM_Z = 50  # latents per weight draw in evaluate: 1,000 per test point


def _predictive_by_quadrature(post, x, y):
    """The posterior predictive of the draws at each test point, the latent integrated out on a
    grid (2,401 nodes on [-6, 6] prior sds: exact to far below the Monte Carlo errors), in the
    user's units; and the Monte Carlo standard error of evaluate's estimate of each, whose average
    over a weight draw's NUM_Z latents is the only sampled part:
    se = sqrt(sum_s Var_z(v_s)) / (S sqrt(NUM_Z)) (stratified latents do no worse)."""
    net, scaling, s = post.network, post.scaling, post.num_draws
    t = torch.linspace(-6, 6, 2401, dtype=torch.float64)
    prior = torch.exp(-0.5 * t**2)
    prior = prior / prior.sum()
    z = (net.latent_scale * t).expand(s, -1)[..., None]  # (S, nodes, one point)
    sd = net.noise_scale * float(scaling.y_scale)  # sigma in the user's units
    out = {k: [] for k in ("density", "pit", "mean")}
    for m in range(len(x)):
        f = net.mean(post.w.double()[:, None, :], scaling.x(x[m : m + 1]).double(), z)[..., 0]
        f = f * float(scaling.y_scale) + float(scaling.y_loc)
        r = (float(y[m]) - f) / sd
        for name, v in (
            ("density", torch.exp(-0.5 * r**2) / (sd * math.sqrt(2 * math.pi))),
            ("pit", torch.special.ndtr(r)),
            ("mean", f),
        ):
            mean = (v * prior).sum(-1)
            var = ((v - mean[:, None]) ** 2 * prior).sum(-1)
            out[name].append(torch.stack((mean.mean(), var.sum().sqrt() / (s * math.sqrt(NUM_Z)))))
    return {k: torch.stack(v).T for k, v in out.items()}  # name -> (value, se), each (M,)


def _train_log_lik_by_hand(post):
    """log (1/S) sum_s N(y_n; f_{W_s}(x_n, z_{s,n}), (sigma s_y)^2) with the joint draws, user's units."""
    net, scaling = post.network, post.scaling
    f = net.mean(post.w.double(), scaling.x(post.x_train).double(), post.z.double())
    f = f * float(scaling.y_scale) + float(scaling.y_loc)
    sd = net.noise_scale * float(scaling.y_scale)
    log_dens = -0.5 * ((post.y_train.double() - f) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
    return torch.logsumexp(log_dens, 0) - math.log(post.num_draws)


@pytest.mark.parametrize("method", sorted(TINY))
def test_each_method_on_a_tiny_case_evaluates_to_the_predictive_by_quadrature(method, tiny):
    """Each method's draws through ``evaluate`` give the predictive of those draws computed here
    without it: the latent by quadrature, within 5 Monte Carlo standard errors of evaluate's
    latents (log densities: within 4 relative errors plus the Jensen bias, at the points where
    that error is below 0.25; elsewhere the log of a Monte Carlo average is itself off by nats),
    and the training points' reconstruction density exactly (float32 rounding: 1e-3 nats)."""
    post = bnn.infer(tiny.x_train, tiny.y_train, inference=method, hidden=(8,), seed=0, **TINY[method])
    assert post.w.shape == (20, post.network.num_weights) and post.z.shape == (20, 30)
    ev = bnn.evaluate(post, tiny.x_test, tiny.y_test, num_z=NUM_Z, hsic_draws=5)
    ref = _predictive_by_quadrature(post, tiny.x_test, tiny.y_test)
    jacobian = math.log(float(post.scaling.y_scale))  # 1.6 nats here: the negative controls' offset

    (density, density_se), (pit, pit_se), (mean, mean_se) = ref["density"], ref["pit"], ref["mean"]
    rel = density_se / density
    resolved = rel < 0.25
    assert int(resolved.sum()) >= 5, rel
    tol = 4 * rel[resolved] + rel[resolved] ** 2
    got = ev.per_point["test_ll"].double()[resolved]
    assert torch.all((got - density.log()[resolved]).abs() < tol), (got, density.log()[resolved], tol)
    # negative control: a log density without the Jacobian of the standardisation is rejected
    assert not torch.all((got + jacobian - density.log()[resolved]).abs() < tol)

    pit_tol = 5 * pit_se + 1e-5  # 1e-5: float32 sums of 1,000 values
    assert torch.all((ev.per_point["test_pit"].double() - pit).abs() < pit_tol)
    surely = ((pit > 0.05 + pit_tol) & (pit < 0.95 - pit_tol)).sum()
    possibly = ((pit > 0.05 - pit_tol) & (pit < 0.95 + pit_tol)).sum()
    assert surely <= round(ev["coverage90"].mean * 20) <= possibly, (ev["coverage90"], surely, possibly)
    # |RMSE_a - RMSE_b| <= the root mean square of the differences of the means (triangle inequality)
    rmse = float(((mean - tiny.y_test.double()) ** 2).mean().sqrt())
    assert ev["rmse"].mean == pytest.approx(rmse, abs=float((5 * mean_se).pow(2).mean().sqrt()))

    train = _train_log_lik_by_hand(post)
    assert torch.allclose(ev.per_point["train_ll"].double(), train, atol=1e-3, rtol=0)
    assert ev["train_ll"].mean == pytest.approx(float(train.mean()), abs=1e-3)
    assert not torch.allclose(ev.per_point["train_ll"].double() + jacobian, train, atol=1e-3, rtol=0)


def test_noise_constrained_refits_the_lambda_with_the_best_validation_score(tiny, monkeypatch):
    """lambda is the grid value with the highest mean validation log density, refit on all the
    training points: the validation scores forced to a known order whose best is in the middle
    of the grid (neither the first, the last, the smallest nor the largest), the fits recorded,
    and the result against a fit with that lambda given."""
    penalties, real_fit = [], noise_constrained.fit_variational
    scores = {1.0: -3.0, 10.0: -1.0, 100.0: -2.0}

    def recording_fit(network, x, y, *, penalty, **options):
        penalties.append((penalty, x.shape[0]))
        return real_fit(network, x, y, penalty=penalty, **options)

    def scored(network, w, x, y, **options):  # the score of the lambda fitted last
        return {"log_lik": torch.full((x.shape[0],), scores[penalties[-1][0]])}

    monkeypatch.setattr(noise_constrained, "fit_variational", recording_fit)
    monkeypatch.setattr(noise_constrained, "predictive_summary", scored)
    opts = {"inference": "noise_constrained", "hidden": (4,), "seed": 0, "steps": 5, "num_draws": 4}
    post = bnn.infer(tiny.x_train, tiny.y_train, lams=tuple(scores), **opts)
    # 6 of the 30 points held out (val_fraction 0.2), each lambda fit on the other 24, then the refit
    assert penalties == [(1.0, 24), (10.0, 24), (100.0, 24), (10.0, 30)]
    assert post.info["lam"] == 10.0
    assert post.info["validation"] == {lam: (score, 0.0) for lam, score in scores.items()}
    given = bnn.infer(tiny.x_train, tiny.y_train, lam=10.0, **opts)
    assert torch.equal(post.w, given.w) and torch.equal(post.z, given.z)


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
