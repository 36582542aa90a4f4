"""The semicircle process: its formulas, its densities against an independent integral, and the
shapes of its posteriors (unimodal given the label, bimodal with the label summed out)."""

import copy
import math

import numpy as np
import pytest
import torch
from pyro import poutine

from pyrofail import zoo
from pyrofail.analysis.semisupervised import quadrature_log_px


@pytest.fixture(scope="module")
def truth():
    return zoo.model("semicircle")


def test_entry_and_defaults(truth):
    entry = zoo.entry("model", "semicircle")
    assert entry.meta["labels"] and entry.meta["num_classes"] == 2
    assert (truth.latent_dim, truth.data_dim, truth.num_classes) == (1, 2, 2)
    assert float(truth.noise_scale) == pytest.approx(0.05)
    assert torch.allclose(truth.log_class_probs.exp(), torch.tensor([0.5, 0.5]))


def test_sample_is_seeded_and_labelled(truth):
    torch.manual_seed(0)
    a = truth.sample(4000, seed=3)
    torch.manual_seed(1)  # the global state must not matter
    b = truth.sample(4000, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.z, b.z)
    assert a.y.dtype == torch.long and set(a.y.unique().tolist()) == {0, 1}
    # y ~ Bernoulli(1/2): within 4 binomial standard errors
    assert abs(float(a.y.double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(4000)
    # the noise around the curve has the stated scale (both coordinates, sd sigma)
    resid = a.x - truth.curve(a.z, a.y)
    assert float(resid.std()) == pytest.approx(0.05, rel=0.05)


def test_curves_are_mirror_images_on_the_semicircle(truth):
    z = torch.linspace(-3, 3, 61)[:, None]
    f0 = truth.curve(z, torch.zeros(61, dtype=torch.long))
    f1 = truth.curve(z, torch.ones(61, dtype=torch.long))
    assert torch.allclose(f0.norm(dim=-1), torch.ones(61), atol=1e-6)
    assert bool((f0[:, 1] >= 0).all())
    mirror = f0 * torch.tensor([-1.0, 1.0])
    assert torch.allclose(f1, mirror, atol=1e-6)
    # theta = pi Phi(z)^2 for class 0: at z = 0, pi / 4
    angle = torch.atan2(f0[30, 1], f0[30, 0])
    assert float(angle) == pytest.approx(math.pi / 4, abs=1e-6)


def test_log_joint_with_labels_equals_the_pyro_trace(truth):
    data = truth.sample(30, seed=2)
    conditioned = poutine.condition(truth.model, data={"z": data.z})
    trace = poutine.trace(conditioned).get_trace(data.x, data.y)
    assert float(truth.log_joint(data.z, data.x, data.y).sum()) == pytest.approx(
        float(trace.log_prob_sum()), rel=1e-5
    )


def test_log_joint_sums_the_label_out_where_unknown(truth):
    data = truth.sample(10, seed=4)
    y = data.y.clone()
    y[::2] = -1
    per_class = torch.stack([truth.log_joint(data.z, data.x, torch.full_like(y, c)) for c in (0, 1)])
    summed = torch.logsumexp(per_class, 0)
    mixed = truth.log_joint(data.z, data.x, y)
    assert torch.allclose(mixed[::2], summed[::2]) and torch.allclose(
        mixed[1::2], per_class[y[1::2], 1::2].diagonal()
    )
    assert torch.allclose(truth.log_joint(data.z, data.x), summed)


def _class_density_by_angle(x: np.ndarray, label: int, sigma: float) -> np.ndarray:
    """p(x | y) by the substitution theta = pi t^2 (class 0) or pi (1 - t^2) (class 1), t ~ U(0, 1):
    an integral over t in [0, 1] (trapezoid on 400,001 nodes), independent of the z quadrature."""
    t = np.linspace(0.0, 1.0, 400_001)
    theta = np.pi * t**2 if label == 0 else np.pi * (1 - t**2)
    mu = np.stack((np.cos(theta), np.sin(theta)), -1)  # (T, 2)
    sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    dens = np.exp(-0.5 * sq / sigma**2) / (2 * np.pi * sigma**2)
    return np.trapezoid(dens, t, axis=-1)


def test_class_densities_match_an_integral_over_the_angle(truth):
    """The z quadrature (on the model at each label) against the angle integral: to 1e-5 nats
    with a fine mesh, and to 5e-4 (the grid's stated accuracy) with the default one."""
    data = truth.sample(12, seed=5)
    for label in (0, 1):
        by_angle = np.log(_class_density_by_angle(data.x.double().numpy(), label, 0.05))
        fine = quadrature_log_px(truth.given_label(label), data.x, tol=0.1).numpy()
        default = quadrature_log_px(truth.given_label(label), data.x).numpy()
        assert np.abs(fine - by_angle).max() < 1e-5
        assert np.abs(default - by_angle).max() < 5e-4


def test_summed_label_quadrature_is_the_mixture_of_the_classes(truth):
    data = truth.sample(20, seed=6)
    direct = quadrature_log_px(truth, data.x)  # uniform mesh on log_joint(z, x), y summed out
    per_class = torch.stack([quadrature_log_px(truth.given_label(c), data.x) for c in (0, 1)])
    mixture = torch.logsumexp(per_class + math.log(0.5), 0)
    assert torch.allclose(direct, mixture, atol=1e-3)


def _local_maxima(log_density: torch.Tensor, floor: float = 1e-3) -> int:
    """Local maxima of a density on a fine grid holding at least ``floor`` of the peak."""
    d = (log_density - log_density.max()).exp()
    inner = (d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:]) & (d[1:-1] > floor)
    return int(inner.sum())


def test_posteriors_unimodal_given_the_label_and_bimodal_without(truth):
    n = 30
    data = truth.sample(n, seed=7)
    z = torch.linspace(-7, 7, 14_001, dtype=torch.float64)[:, None, None]  # (G, 1, 1), step 0.001
    work = copy.deepcopy(truth).double()
    x = data.x.double()
    given = [work.given_label(c).log_joint(z, x[None]) for c in (0, 1)]  # (G, N) each
    summed = work.log_joint(z, x[None])
    assert all(_local_maxima(g[:, i]) == 1 for g in given for i in range(n))
    modes = [_local_maxima(summed[:, i]) for i in range(n)]
    # two modes unless the point sits where one class has almost no mass (the ends of the arc)
    assert sum(m == 2 for m in modes) >= 0.75 * n, modes
    assert max(modes) <= 2
