"""The semi-supervised metrics against an independent computation (the class densities and
exact posterior medians of semicircle by the midpoint rule in u = Phi(z), written here without
the library's quadrature), closed forms, and a collapsed model."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis import semisupervised
from pyrofail.errors import UsageError
from pyrofail.guides.base import AmortizedGuide
from pyrofail.guides.m2 import M2Guide
from pyrofail.models.m2 import LabelledLatentGaussian
from pyrofail.models.semicircle import SemicircleCurve

SIGMA = 0.05
# The reference below is exact to about 1e-4 nats (20,000 midpoint nodes in u against a posterior
# at least sigma / (2 pi) = 0.008 wide in u), as the library's quadrature is: 1e-3 nats is ten
# times either error and far below any effect tested here (0.6 nats).
NATS = 1e-3
# The library's counterfactuals are at the median of 401 posterior draws, whose Monte Carlo
# error is about 1.25 sigma / sqrt(401) = 0.003 along the arc; 0.02 is six of those.
MEDIAN_ATOL = 0.02


class Collapsed(nn.Module):
    """Both classes on the class-0 curve of semicircle: a fully collapsed M2 decoder."""

    def forward(self, h):
        return SemicircleCurve()(torch.cat((h[..., :1], torch.ones_like(h[..., :1]), h[..., 2:3] * 0), -1))


class Flipped(nn.Module):
    """The truth's curves with the latent reversed, f(-z, y): the same model in another chart."""

    def forward(self, h):
        return SemicircleCurve()(torch.cat((-h[..., :1], h[..., 1:]), -1))


class Shifted(nn.Module):
    """Class 1 is the class-0 curve moved by a constant d: the two curves are exactly |d| apart."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("d", torch.tensor(d))

    def forward(self, h):
        h0 = torch.cat((h[..., :1], torch.ones_like(h[..., :1]), h[..., 2:3] * 0), -1)
        return SemicircleCurve()(h0) + h[..., 2:3] * self.d


# ---- the independent reference: semicircle in u = Phi(z) ~ U(0, 1) ------------------------------


def _angle(c, u):
    """The class-c curve's angle: pi u^2 for class 0, its mirror image pi (1 - u^2) for class 1."""
    return math.pi * u**2 if c == 0 else math.pi * (1 - u**2)


NODES = 20_000


def _log_lik_on_nodes(x, c, nodes=NODES):
    """The angles at the u-nodes ``(n,)`` and log N(x; (cos, sin)(angle), sigma^2 I) ``(N, n)``."""
    u = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
    theta = _angle(c, u)
    curve = torch.stack((theta.cos(), theta.sin()), -1)
    sq = ((x.double()[:, None, :] - curve) ** 2).sum(-1)
    return theta, -0.5 * sq / SIGMA**2 - math.log(2 * math.pi * SIGMA**2)


def ref_log_px_given(x, c):
    """log p(x | c) = log int_0^1 N(x; f_c(u), sigma^2 I) du, ``(N,)``."""
    ll = _log_lik_on_nodes(x, c)[1]
    return torch.logsumexp(ll, 1) - math.log(ll.shape[1])


def ref_posterior(x, c):
    """The angles at the nodes ``(n,)``, the posterior weights of the nodes ``(N, n)`` and the node
    at the posterior median ``(N,)`` (z, u and the angle are monotone in each other, so the
    median of one is the median of the others)."""
    theta, ll = _log_lik_on_nodes(x, c)
    weights = torch.softmax(ll, 1)
    return theta, weights, (weights.cumsum(1) < 0.5).sum(1)


def ref_counterfactual(x, y):
    """The true counterfactual at the exact posterior median: the mirror image across the
    vertical axis of the curve point at the median angle, ``(N, 2)``; and that point itself."""
    theta = torch.zeros(len(y), dtype=torch.float64)
    for c in (0, 1):
        nodes, _, median = ref_posterior(x[y == c], c)
        theta[y == c] = nodes[median]
    return torch.stack((-theta.cos(), theta.sin()), -1), torch.stack((theta.cos(), theta.sin()), -1)


@pytest.fixture(scope="module")
def truth():
    return zoo.model("semicircle")


@pytest.fixture(scope="module")
def data(truth):
    return truth.sample(60, seed=3)


@pytest.fixture(scope="module")
def collapsed():
    return LabelledLatentGaussian(Collapsed(), 1, 2, 2, SIGMA)


class MedianGuide(AmortizedGuide):
    """Test-only q(z | x, y): a narrow Gaussian at the exact posterior median of the reference."""

    def __init__(self, width=1e-4):
        super().__init__()
        self.width = width
        self.latent_dim, self.data_dim, self.restarts = 1, 4, None

    def distribution(self, h):
        lead, flat = h.shape[:-1], h.reshape(-1, 4)
        x, y = flat[:, :2], flat[:, 2:].argmax(-1)
        loc = torch.zeros(len(flat))
        for c in (0, 1):
            rows = y == c
            if rows.any():
                median = ref_posterior(x[rows], c)[2]
                loc[rows] = torch.special.ndtri((median.double() + 0.5) / NODES).float()
        return dist.Normal(loc.reshape(*lead, 1), self.width).to_event(1)


def test_the_counterfactuals_of_the_truth_are_the_mirror_images_at_the_exact_median(truth, data):
    """The truth's counterfactual of a point is the mirror image (across the vertical axis) of the
    curve point at its posterior median: against the reference, within the draws' Monte Carlo
    error; the same for a model in another chart (z -> -z), whose error against the truth is
    then that Monte Carlo error alone; and through a guide at the exact median."""
    want, itself = ref_counterfactual(data.x, data.y)
    exact = semisupervised.counterfactual_error(truth, None, data.x, data.y, truth, seed=1)
    assert exact["n"] == 60
    assert torch.allclose(exact["true_counterfactuals"], want, atol=MEDIAN_ATOL, rtol=0)
    # negative control: the point itself in place of its mirror image fails the same check
    assert not torch.allclose(exact["true_counterfactuals"], itself, atol=MEDIAN_ATOL, rtol=0)
    # truth_spread: the posterior mean of the chord |f(z*, 1 - y) - f(z~*, 1 - y)| =
    # 2 |sin((theta - theta_med) / 2)|; 401 draws for each of 60 points make its Monte Carlo
    # error about 0.5%; 5% is ten of those
    chord = torch.zeros(60, dtype=torch.float64)
    for c in (0, 1):
        nodes, weights, median = ref_posterior(data.x[data.y == c], c)
        half = (nodes[None, :] - nodes[median][:, None]) / 2
        chord[data.y == c] = (weights * 2 * half.sin().abs()).sum(1)
    assert exact["truth_spread"] == pytest.approx(float(chord.mean()), rel=0.05)

    flipped = LabelledLatentGaussian(Flipped(), 1, 2, 2, SIGMA)
    other_chart = semisupervised.counterfactual_error(flipped, None, data.x, data.y, truth, seed=1)
    assert torch.allclose(other_chart["counterfactuals"], want, atol=MEDIAN_ATOL, rtol=0)
    # two Monte Carlo medians, each within MEDIAN_ATOL of the exact one; each about 0.003 off,
    # so their mean distance is well under half the tolerance
    assert float(other_chart["per_point"].max()) < 2 * MEDIAN_ATOL
    assert other_chart["mean"] < MEDIAN_ATOL / 2

    guide = M2Guide(1, 2, family=MedianGuide(), hidden=(4,))
    through_guide = semisupervised.counterfactual_error(
        truth, guide, data.x, data.y, truth, seed=0, method="guide"
    )
    # the guide's draws are 1e-4 from the exact median: its counterfactuals are the reference's
    # up to the node spacing of the reference (1 / 20,000 in u)
    assert torch.allclose(through_guide["counterfactuals"], want, atol=1e-3, rtol=0)
    assert float(through_guide["per_point"].max()) < MEDIAN_ATOL


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


def test_curve_separation_against_closed_forms(truth):
    """The truth: E||f(z,0) - f(z,1)|| = 2 E|cos(pi U^2)|, U ~ U(0, 1) (the curves are mirror
    images); a model whose class-1 curve is its class-0 curve moved by d: exactly |d|."""
    u = (np.arange(2_000_000) + 0.5) / 2_000_000
    closed = 2 * np.abs(np.cos(np.pi * u**2)).mean()
    # the midpoint rule on 4,000 nodes of a function with a kink is good to about 1e-5
    assert semisupervised.curve_separation(truth) == pytest.approx(closed, abs=1e-4)
    # d exact in binary (|d| = 0.625), so that only float64 rounding is left
    shifted = LabelledLatentGaussian(Shifted((0.375, 0.5)), 1, 2, 2, SIGMA)
    col = semisupervised.collapse(shifted, truth)
    assert col["learned"] == pytest.approx(0.625, abs=1e-12)
    assert col["truth"] == pytest.approx(closed, abs=1e-4)
    assert col["ratio"] == pytest.approx(0.625 / closed, rel=1e-4)


def test_divergences_against_the_reference(truth, collapsed):
    """The class densities against the reference (within NATS), and the divergences of a
    collapsed model as the mean over test points of the reference's log-density differences."""
    many = truth.sample(400, seed=4)
    ref = torch.stack([ref_log_px_given(many.x, c) for c in (0, 1)])
    got = semisupervised.class_log_likelihoods(truth, many.x)
    assert torch.allclose(got, ref, atol=NATS, rtol=0)
    # negative control: the classes swapped fail the same check
    assert not torch.allclose(got, ref[[1, 0]], atol=NATS, rtol=0)
    # the collapsed model puts both classes on the class-0 curve: its p(x | c) is the truth's p(x | 0)
    diff = ref - ref[[0, 0]]
    wrong = semisupervised.class_mleo(collapsed, truth, many.x, many.y)
    for c in (0, 1):
        d = diff[c, many.y == c]
        assert wrong[c]["n"] == len(d)
        assert wrong[c]["mean"] == pytest.approx(float(d.mean()), abs=NATS)
        assert wrong[c]["stderr"] == pytest.approx(float(d.std() / math.sqrt(len(d))), rel=0.01)
    # class 1 modelled by the class-0 density: the divergence of the angles is
    # int_0^1 p1 log(p1 / p0) dt = 0.691 (p0 = 1 / (2 sqrt t), p1 = 1 / (2 sqrt(1 - t))), and the
    # same noise added to both can only lower it (data processing): below 0.691, and above 0
    kl_angles = 0.691
    assert 4 * wrong[1]["stderr"] < wrong[1]["mean"] < kl_angles + 4 * wrong[1]["stderr"]
    log_half = math.log(0.5)
    mixed = torch.logsumexp(ref + log_half, 0) - ref[0]  # log p_GT(x) - log p_collapsed(x)
    kl = semisupervised.mleo(collapsed, truth, many.x)
    assert kl["n"] == 400
    assert kl["mean"] == pytest.approx(float(mixed.mean()), abs=NATS)
    assert kl["stderr"] == pytest.approx(float(mixed.std() / 20), rel=0.01)
    assert kl["mean"] > 4 * kl["stderr"]


def test_log_px_sums_the_label_out(truth, data):
    per_class = semisupervised.class_log_likelihoods(truth, data.x[:10])
    direct = semisupervised.quadrature_log_px(truth, data.x[:10])  # log_joint(z, x), y summed out
    assert torch.allclose(semisupervised.log_px(truth, data.x[:10], per_class), direct, atol=1e-3)


def test_accuracies_against_the_reference_classifier(truth, data):
    """The Bayes classifier (equal class probabilities: the larger p(x | c)) by the reference;
    ``accuracy`` of a classifier whose predictions are known, counted here."""
    ref = torch.stack([ref_log_px_given(data.x, c) for c in (0, 1)])
    hits = int((ref.argmax(0) == data.y).sum())
    # a point whose class densities are within NATS of each other may go either way
    undecided = int(((ref[0] - ref[1]).abs() < NATS).sum())
    bayes = semisupervised.bayes_accuracy(truth, data.x, data.y)
    assert abs(bayes["mean"] * 60 - hits) <= undecided
    # the classes share the semicircle: even the Bayes classifier errs
    assert 0.55 < hits / 60 < 0.95

    class Reference:  # the reference's p(y | x)
        restarts = None

        def classify(self, x):
            return torch.softmax(torch.stack([ref_log_px_given(x, c) for c in (0, 1)], -1), -1)

    class AlwaysZero:
        restarts = None

        def classify(self, x):
            return torch.tensor([1.0, 0.0]).expand(len(x), 2)

    for guide, right in ((Reference(), hits), (AlwaysZero(), int((data.y == 0).sum()))):
        acc = semisupervised.accuracy(guide, data.x, data.y)
        a = right / 60
        assert acc["mean"] == pytest.approx(a, abs=1e-12) and acc["n"] == 60
        assert acc["stderr"] == pytest.approx(math.sqrt(a * (1 - a) / 60), rel=1e-9)


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
