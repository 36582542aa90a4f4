"""The semi-supervised metrics: zero for the truth, the right values for a collapsed model,
and the exact curve separation."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis import semisupervised
from pyrofail.analysis.reference import grid
from pyrofail.errors import UsageError
from pyrofail.guides.base import AmortizedGuide
from pyrofail.guides.m2 import M2Guide
from pyrofail.models.m2 import LabelledLatentGaussian
from pyrofail.models.semicircle import SemicircleCurve


class Collapsed(nn.Module):
    """Both classes on the class-0 curve of semicircle: a fully collapsed M2 decoder."""

    def forward(self, h):
        return SemicircleCurve()(torch.cat((h[..., :1], torch.ones_like(h[..., :1]), h[..., 2:3] * 0), -1))


@pytest.fixture(scope="module")
def truth():
    return zoo.model("semicircle")


@pytest.fixture(scope="module")
def data(truth):
    return truth.sample(60, seed=3)


@pytest.fixture(scope="module")
def collapsed():
    return LabelledLatentGaussian(Collapsed(), 1, 2, 2, 0.05)


class MedianGuide(AmortizedGuide):
    """Test-only q(z | x, y): a narrow Gaussian at the truth's exact posterior median."""

    def __init__(self, truth, width=1e-4):
        super().__init__()
        self.truth, self.width = truth, width
        self.latent_dim, self.data_dim, self.restarts = 1, 4, None

    def distribution(self, h):
        lead, flat = h.shape[:-1], h.reshape(-1, 4)
        x, y = flat[:, :2], flat[:, 2:].argmax(-1)
        loc = torch.zeros(len(flat))
        for c in (0, 1):
            rows = y == c
            if rows.any():
                draws = grid.grid_posterior(self.truth.given_label(c), x[rows], num_draws=401, seed=0).draws
                loc[rows] = draws.median(1).values[:, 0].float()
        return dist.Normal(loc.reshape(*lead, 1), self.width).to_event(1)


def test_counterfactual_error_is_zero_for_the_truth(truth, data):
    """The truth as its own model: identical posteriors and draws, so exactly 0; through a guide
    at the exact posterior median, 0 up to the guide's width."""
    exact = semisupervised.counterfactual_error(truth, None, data.x, data.y, truth, seed=1)
    assert exact["mean"] == 0.0 and exact["n"] == 60
    # the true counterfactual's own spread is of the order of sigma
    assert 0.01 < exact["truth_spread"] < 0.1
    guide = M2Guide(1, 2, family=MedianGuide(truth), hidden=(4,))
    through_guide = semisupervised.counterfactual_error(
        truth, guide, data.x, data.y, truth, seed=0, method="guide"
    )
    assert through_guide["mean"] < 1e-3


def test_a_collapsed_model_gets_the_mirror_image_wrong(truth, data, collapsed):
    """With both classes on one curve, the counterfactual of a point is (near) the point itself
    instead of its mirror image: for a point of class 1 at angle theta, the distance between its
    projection on the circle and the mirror image of that, 2 |cos theta|, up to the posterior's
    spread along the arc."""
    out = semisupervised.counterfactual_error(collapsed, None, data.x, data.y, truth, seed=0)
    assert out["mean"] > 10 * out["truth_spread"]
    assert semisupervised.collapse(collapsed, truth)["learned"] == 0.0
    per = out["per_point"]
    mirror = 2 * torch.atan2(data.x[:, 1], data.x[:, 0]).cos().abs().double()
    ones = data.y == 1
    assert torch.allclose(per[ones], mirror[ones], atol=0.1)


def test_curve_separation_of_the_truth_is_its_closed_form(truth):
    """E||f(z,0) - f(z,1)|| = 2 E|cos(pi U^2)|, U ~ U(0, 1) (the curves are mirror images)."""
    u = (np.arange(2_000_000) + 0.5) / 2_000_000
    closed = 2 * np.abs(np.cos(np.pi * u**2)).mean()
    assert semisupervised.curve_separation(truth) == pytest.approx(closed, abs=1e-4)
    assert semisupervised.collapse(truth, truth)["ratio"] == 1.0


def test_divergences_are_zero_for_the_truth_and_positive_for_a_collapsed_model(truth, data, collapsed):
    for kl in semisupervised.class_mleo(truth, truth, data.x, data.y):
        assert kl["mean"] == 0.0
    assert semisupervised.mleo(truth, truth, data.x)["mean"] == 0.0
    many = truth.sample(400, seed=4)
    wrong = semisupervised.class_mleo(collapsed, truth, many.x, many.y)
    # class 1 modelled by the class-0 density: as sigma -> 0 the divergence is that of the
    # angles, int_0^1 p1 log(p1 / p0) dt = 0.69 with p0 = 1 / (2 sqrt t), p1 = 1 / (2 sqrt(1 - t))
    assert wrong[1]["mean"] > 0.1 and wrong[1]["mean"] > 4 * wrong[1]["stderr"]
    assert sum(r["n"] for r in wrong) == 400
    assert abs(wrong[0]["mean"]) < 4 * wrong[0]["stderr"] + 1e-3  # class 0 is modelled right
    kl = semisupervised.mleo(collapsed, truth, many.x)
    assert kl["mean"] > 4 * kl["stderr"]


def test_log_px_sums_the_label_out(truth, data):
    per_class = semisupervised.class_log_likelihoods(truth, data.x[:10])
    direct = semisupervised.quadrature_log_px(truth, data.x[:10])  # log_joint(z, x), y summed out
    assert torch.allclose(semisupervised.log_px(truth, data.x[:10], per_class), direct, atol=1e-3)


def test_accuracies(truth, data):
    class Oracle:  # classify with the exact p(y | x)
        restarts = None

        def classify(self, x):
            lc = semisupervised.class_log_likelihoods(truth, x)
            return torch.softmax(lc.T, -1)

    bayes = semisupervised.bayes_accuracy(truth, data.x, data.y)
    oracle = semisupervised.accuracy(Oracle(), data.x, data.y)
    assert oracle["mean"] == bayes["mean"]
    assert oracle["stderr"] == pytest.approx(math.sqrt(bayes["mean"] * (1 - bayes["mean"]) / 60))
    # the classes share the semicircle: even the Bayes classifier errs
    assert 0.55 < bayes["mean"] < 0.95


def test_summary_and_bad_input(truth, data, collapsed):
    guide = M2Guide(1, 2, hidden=(4,))
    out = semisupervised.summarize(collapsed, guide, data.x[:20], data.y[:20], truth, num_draws=51)
    assert out["separation_ratio"] == 0.0 and out["counterfactual_error_model"] > 0.1
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(UsageError, match="every test point labelled"):
        semisupervised.accuracy(guide, data.x[:3], torch.tensor([0, -1, 1]))
    with pytest.raises(UsageError, match="method"):
        semisupervised.counterfactual_error(truth, guide, data.x, data.y, truth, method="mean")
    with pytest.raises(UsageError, match="latent_dim=1"):
        semisupervised.curve_separation(zoo.model("figure8"))
