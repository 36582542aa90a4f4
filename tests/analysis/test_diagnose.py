"""The failure diagnosis: KL* against closed forms, the verdict logic, and two analytic cases.

The analytic cases use the quadratic process (Example 1 of Yacoby et al.), whose ground-truth
posteriors all have two modes of equal mass, against two decoders with unimodal posteriors:
``(Phi(z) / 2)^2`` gives *exactly* the truth's p(x) (u / 2 and |u - 1/2| are both uniform on
[0, 1/2] for u ~ U(0, 1)): a latent-space failure; ``Phi(z) / 4`` gives a uniform p(x) instead
of the truth's, whose density grows like 1 / sqrt(x) near 0: a data-distribution failure.
"""

import dataclasses
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis import diagnose
from pyrofail.analysis.diagnose import MARGIN_NATS, conclude, evidence, training_flags
from pyrofail.analysis.hardness import HARD_KL, _LogJoint, best_mean_field
from pyrofail.guides.base import AmortizedGuide
from pyrofail.models import LatentGaussian, LinearGaussian
from pyrofail.nn import MLP

N = 200  # points of the synthetic evidence


def test_hard_kl_is_the_cost_of_missing_a_tenth_of_the_mass():
    """HARD_KL is KL(q || p) for q one of two far-apart modes of p with 90% of its mass:
    KL(N(0, 1) || 0.9 N(0, 1) + 0.1 N(20, 1)), by quadrature."""
    z = torch.linspace(-10, 30, 400001, dtype=torch.float64)
    q = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    p = torch.logaddexp(math.log(0.9) + q, math.log(0.1) + torch.distributions.Normal(20.0, 1.0).log_prob(z))
    kl = float((q.exp() * (q - p)).sum() * (z[1] - z[0]))
    assert HARD_KL == pytest.approx(kl, abs=1e-6)


# -- KL*: the best mean-field Gaussian per point ---------------------------------------------


def test_best_mean_field_of_a_correlated_gaussian_is_the_closed_form():
    """For N(m, Lambda^-1) the best diagonal Gaussian has mean m and variances 1 / Lambda_ii,
    and KL* = (sum_i log Lambda_ii - log det Lambda) / 2 (LinearGaussian.mean_field_gap)."""
    truth = LinearGaussian().double()
    x = truth.sample(10, seed=0).x.double()
    out = best_mean_field(truth, x, num_draws=300)
    post = truth.posterior(x)
    precision = torch.linalg.inv(post.covariance_matrix[0])
    gap = torch.full((10,), truth.mean_field_gap(), dtype=torch.float64)
    assert torch.allclose(out["kl"], gap, atol=1e-6)
    assert torch.allclose(out["loc"], post.mean, atol=1e-5)
    assert torch.allclose(out["scale"], precision.diagonal().rsqrt().expand(10, 2), atol=1e-5)
    assert out["share_hard"] == 1.0  # 0.318 nats: correlated posteriors are hard for mean field


def test_best_mean_field_of_a_gaussian_posterior_is_exact():
    truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=3).double()
    x = truth.sample(10, seed=0).x.double()
    out = best_mean_field(truth, x, num_draws=300)
    assert float(out["kl"].abs().max()) < 1e-8
    assert out["share_hard"] == 0.0 and out["mean"] < 1e-8


def test_best_mean_field_of_two_equal_modes_is_log_two():
    """Two well-separated modes of mass 1/2: the best Gaussian sits on one and pays log 2 plus
    the (small) KL to that mode's own shape; a Gaussian over both would pay far more."""
    truth = zoo.model("quadratic")
    x = torch.tensor([[0.1], [0.15]], dtype=torch.float64)
    out = best_mean_field(truth, x, num_draws=500)
    assert torch.all(out["kl"] >= math.log(2) - 1e-3)
    assert torch.all(out["kl"] <= math.log(2) + 0.02)
    z_star = torch.special.ndtri(0.5 + x.sqrt())
    assert torch.allclose(out["loc"].abs(), z_star, atol=0.01)


def test_tabulated_log_joint_matches_the_model():
    z = torch.linspace(-4, 4, 101, dtype=torch.float64)[:, None]
    torch.manual_seed(0)
    mlp = LatentGaussian(MLP((1, 16, 16, 2)), 1, 2, 0.1).double()
    for model in (zoo.model("figure8").double(), mlp):
        x = model.sample(7, seed=1).x.double()
        table = _LogJoint(model)
        assert table.tabulated
        exact = model.log_joint(z[:, None, :], x)
        assert torch.allclose(table(z[:, None, :], x), exact, atol=1e-3, rtol=1e-6)


# -- the verdict, from synthetic evidence ----------------------------------------------------


def _noisy(value, seed):
    """``value`` at every point plus noise of mean exactly zero (standard error 0.0007)."""
    e = 0.01 * torch.randn(N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return value + (e - e.mean())


def _side(label, kl, mleo, pmo=0.3, seed=0):
    return {
        "job": label,
        "kl": _noisy(kl, seed),
        "mleo": _noisy(mleo, seed + 1),
        "pmo_gap": _noisy(pmo, 2),
    }


def _text(verdict) -> str:
    return " ".join(verdict.sentences())


def test_simpler_posteriors_and_worse_px_is_a_data_distribution_failure():
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.05, 0.30), _side("iwae", 0.5, 0.01, seed=5))
    out = conclude(ev)
    assert out.failure == "data distribution"
    assert out.conditions == {"Cx1": True, "Cx2": True, "Cz2": False}
    text = _text(out)
    assert "MLEO 0.300 ± 0.001 against 0.010 ± 0.001 nats" in text and "Cx1 needs 0%" in text
    assert "at 100% ± 0% of the" in text
    assert out.guidelines == ["flexible"] and "more flexible variational family" in text


def test_simpler_posteriors_and_the_same_px_is_a_latent_space_failure():
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.05, 0.02), _side("iwae", 0.5, 0.01, seed=5))
    out = conclude(ev)
    assert out.failure == "latent space"
    assert out.conditions == {"Cx1": True, "Cx2": False, "Cz2": True}
    assert out.guidelines == ["latent"] and "latent space of an MFG-VAE" in _text(out)


def test_no_simplification_is_undetermined():
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.58, 0.02), _side("iwae", 0.5, 0.01, seed=5))
    out = conclude(ev)
    assert (out.failure, out.reason) == ("undetermined", "no-trade")
    assert out.conditions == {"Cx1": True, "Cx2": None, "Cz2": None}


def test_easy_true_posteriors_predict_no_failure():
    ev = evidence(_noisy(0.02, 9), _side("vae", 0.0, 0.30), None)
    out = conclude(ev)
    assert out.failure == "none" and out.conditions["Cx1"] is False


def test_an_inconclusive_px_difference_is_undetermined():
    side = _side("vae", 0.05, 0.0)
    # 0.04 +- 0.014: below the margin, but not by two standard errors
    side["mleo"] = torch.cat((torch.full((100,), -0.16), torch.full((100,), 0.24))).double()
    ev = evidence(_noisy(0.6, 9), side, _side("iwae", 0.5, 0.0, seed=5))
    out = conclude(ev)
    assert (out.failure, out.reason) == ("undetermined", "px-unclear")
    assert "cannot be told from" in _text(out)


def test_differences_inside_the_margin_do_not_count():
    margin = MARGIN_NATS
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.6 - 0.8 * margin, 0.3), _side("iwae", 0.5, 0.01, seed=5))
    assert conclude(ev).failure == "undetermined"
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.05, 0.01 + 0.8 * margin), _side("iwae", 0.5, 0.01, seed=5))
    assert conclude(ev).failure == "latent space"


@pytest.mark.parametrize(
    "hard, holds",
    [
        # c_n = KL* where hard, else 0: the share s needs s >= 2 se(c) / KL* = 2 sqrt(s (1 - s) / (N - 1))
        (4, True),  # 2% of 200 points: 2 sqrt(0.02 x 0.98 / 199) = 1.98%
        (3, False),  # 1.5%: it asks 1.72%
        (200, True),  # every point hard: no spread at all
        (0, False),
    ],
)
def test_cx1_needs_a_hard_share_whose_cost_is_two_standard_errors_above_zero(hard, holds):
    truth_kl = torch.zeros(N, dtype=torch.float64)
    truth_kl[:hard] = 0.3
    ev = evidence(truth_kl, _side("vae", 0.0, 0.0), None)
    assert ev.truth_share_hard.mean == hard / N
    cost = torch.where(truth_kl > 0.2, truth_kl, torch.zeros(N, dtype=torch.float64))
    if 0 < hard < N:
        assert ev.cost_error == pytest.approx(float(cost.std() / math.sqrt(N)), rel=1e-12)
        assert ev.cx1_share == pytest.approx(2 * ev.cost_error / 0.3, rel=1e-12)
    assert conclude(ev).conditions["Cx1"] is holds


def test_a_cost_too_uncertain_to_see_leaves_cx1_open():
    """When even every point being hard could not be told from zero, Cx1 is neither held nor
    refuted: the verdict is undetermined for want of rows."""
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.0, 0.0), None)
    ev = dataclasses.replace(ev, cost_error=0.4, cx1_share=1.0, cx1_reachable=False)
    out = conclude(ev)
    assert out.conditions["Cx1"] is None and out.reason == "too-few-rows"
    assert "Cx1 (= Cz1) cannot be told" in _text(out)


def test_too_few_test_rows_is_undetermined_with_the_rows_needed():
    """Fewer than MIN_ROWS test points: undetermined whatever the estimates (a difference of
    the margin needs n = ((z_0.975 + z_0.8) sd / margin)^2 test points)."""
    side = _side("vae", 0.05, 0.3)
    side["mleo"] = torch.tensor([0.3, -0.3] * 6, dtype=torch.float64) + 0.3  # 12 points, sd 0.313
    ev = evidence(_noisy(0.6, 9), side, None)
    out = conclude(ev)
    assert ev.px_cost.mean > 2 * ev.px_cost.stderr + MARGIN_NATS  # it would look decisive
    assert ev.rows_needed == math.ceil(((1.959964 + 0.841621) * float(side["mleo"].std()) / MARGIN_NATS) ** 2)
    assert (out.failure, out.reason) == ("undetermined", "too-few-rows")
    assert f"12 test rows, about {ev.rows_needed} needed" in _text(out)


def test_a_kept_px_needs_the_power_to_have_seen_a_difference():
    """A latent-space verdict claims p(x) is kept: with fewer test points than rows_needed it
    is undetermined, with as many it stands."""
    spread = torch.tensor([0.2, -0.2] * 50, dtype=torch.float64)  # 100 points, sd 0.2: ~126 needed
    side = {**_side("vae", 0.05, 0.0), "mleo": spread}
    out = conclude(evidence(_noisy(0.6, 9), side, None))
    assert (out.failure, out.reason) == ("undetermined", "too-few-rows")
    side = {**_side("vae", 0.05, 0.0), "mleo": spread.repeat(2)}  # 200 points
    assert conclude(evidence(_noisy(0.6, 9), side, None)).failure == "latent space"


def test_when_the_mfg_vae_fits_best_there_is_no_trade_to_detect():
    ev = evidence(_noisy(0.6, 9), _side("vae", 0.6, 0.0), None)
    out = conclude(ev, reference="vae", mfg_is_best=True)
    assert (out.failure, out.reason) == ("none", "mfg-is-best")
    text = _text(out)
    assert "no trade to detect" in text and "ground truth" not in text.replace("no ground truth", "")


def test_a_collapsed_stand_in_leaves_the_verdict_undetermined_not_none():
    """A stand-in that ignores its latent has the prior as every posterior: KL* is 0 at every
    point, which would read as "no hard posteriors, no failure" (on figure8 and quadratic
    samples, whose true posteriors are hard at 15% and 88% of the points, both fits collapsed
    and the check said "none"). Its verdict is undetermined, and the text says why."""
    collapsed = torch.zeros(200, dtype=torch.float64)
    ev = evidence(collapsed, {**_side("vae", 0.0, 0.0), "kl": collapsed}, None)
    assert conclude(ev, reference="iwae").failure == "none"  # what the numbers alone say
    out = conclude(ev, reference="iwae", collapsed=True)
    assert (out.failure, out.reason) == ("undetermined", "collapsed")
    assert "ignores its latent" in _text(out)


def test_the_stand_in_is_collapsed_when_its_mutual_information_is_zero_within_two_errors():
    from pyrofail.estimate import Estimate
    from pyrofail.stages.diagnosis import _collapsed
    from tests.factories import job

    assert _collapsed(job(avg_mutual_information=Estimate(0.0, 0.0, 200)))
    assert _collapsed(job(avg_mutual_information=Estimate(0.002, 0.001, 200)))
    assert not _collapsed(job(avg_mutual_information=Estimate(0.004, 0.004, 200)))  # could be 0.012
    assert not _collapsed(job(avg_mutual_information=Estimate(0.9, 0.02, 200)))


def test_without_a_richer_fit_px_is_compared_with_the_truth():
    out = conclude(evidence(_noisy(0.6, 9), _side("vae", 0.05, 0.30), None), learn_noise=True)
    assert out.failure == "data distribution"
    assert out.evidence.richer is None and "Its p(x) is worse than the ground truth's" in _text(out)
    assert "sigma" in out.guidelines


def test_training_flags_name_the_under_trained_fit():
    restarts = [
        {"init": "ground_truth", "validation_objective": -1.10},
        {"init": "random", "validation_objective": -1.05},  # 0.05 better than the truth's start
    ]
    history = {
        "step": [10, 20, 30, 40],
        "validation": [[-1.3, -1.3], [-1.2, -1.2], [-1.15, -1.1], [-1.1, -1.05]],
    }
    kinds = [f.kind for f in training_flags("j", restarts, history, selected=1)]
    assert kinds == ["truth-started-worse", "still-improving"]
    flat = {"step": [10, 20, 30, 40], "validation": [[-1.1, -1.05]] * 4}
    assert training_flags("j", restarts[::-1][:1], flat, selected=1) == []


def test_the_pmo_gap_is_split_by_the_hardness_of_the_true_posterior():
    truth_kl = torch.cat((torch.full((50,), 0.7), torch.zeros(150))).double()
    side = _side("vae", 0.05, 0.3)
    side["pmo_gap"] = torch.cat((torch.full((50,), 1.2), torch.full((150,), 0.1))).double()
    ev = evidence(truth_kl, side, None)
    assert ev.mean_field.pmo_gap_hard == pytest.approx(1.2)
    assert ev.mean_field.pmo_gap_easy == pytest.approx(0.1)
    assert ev.mean_field.pmo_share_hard == pytest.approx(60 / 75)  # 50 * 1.2 of 50 * 1.2 + 150 * 0.1
    text = _text(conclude(ev))
    assert "1.200 nats on the 25% of points with hard posteriors under the ground truth" in text
    assert "80% of its total, and 0.100" in text


# -- two analytic cases end to end -----------------------------------------------------------


class Decoder(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z):
        return self.fn(z)


class LaplaceGuide(AmortizedGuide):
    """N(z0, (sigma / |f'(z0)|)^2) at the z0 = inverse(x) that a monotone branch of f maps to x:
    a mean-field guide on one posterior mode, computed rather than trained."""

    def __init__(self, model, inverse):
        super().__init__()
        self.model, self.inverse = model, inverse
        self.latent_dim, self.data_dim, self.restarts = 1, 1, None

    def distribution(self, x):
        z0 = torch.special.ndtri(self.inverse(x.clamp_min(0)).clamp(1e-4, 1 - 1e-4))
        h = 1e-5
        slope = (self.model.mean(z0 + h) - self.model.mean(z0 - h)) / (2 * h)
        scale = (self.model.noise_scale / slope.abs()).clamp(1e-3, 1.0)
        return dist.Normal(z0, scale).to_event(1)


@pytest.mark.parametrize(
    "decoder, inverse, failure, n",
    [
        # u / 2 and |u - 1/2| have the same law: exactly the truth's p(x)
        (lambda z: (torch.special.ndtr(z) / 2) ** 2, lambda x: 2 * x.sqrt(), "latent space", 40),
        # uniform on [0, 1/2] instead of the truth's 1 / sqrt(x) on [0, 1/4]: MLEO 1 + log 2 - log 2
        (lambda z: torch.special.ndtr(z) / 2, lambda x: 2 * x, "data distribution", 40),
    ],
)
def test_diagnose_names_the_failure_of_an_analytic_decoder(decoder, inverse, failure, n):
    truth = zoo.model("quadratic").double()
    x = truth.sample(n, seed=3).x.double()
    learned = LatentGaussian(Decoder(decoder), 1, 1, 0.01).double()
    mfg = (learned, LaplaceGuide(learned, inverse))
    richer = (truth, LaplaceGuide(truth, lambda x: 0.5 + x.sqrt()))  # the truth as the richer fit
    out = diagnose(truth, x, mfg, richer, labels=("vae", "truth-as-richer"), num_draws=400)
    ev = out.evidence
    assert ev.truth_share_hard.mean > 0.5 and ev.truth_kl.mean > 0.4  # Cx1: two equal modes
    assert ev.mean_field.kl_star.mean < 0.15  # the learned posteriors are unimodal
    assert abs(ev.richer.mleo.mean) < 1e-3  # the truth against itself
    if failure == "latent space":
        assert abs(ev.mean_field.mleo.mean) < 0.02  # the same p(x), up to the test sample
        assert ev.mean_field.posterior_shift.mean > 0.2  # but not the same latent space
    else:
        assert ev.mean_field.mleo.mean > 0.5
    assert out.failure == failure


def test_diagnose_takes_a_float32_fit():
    """float64 test points reach a float32 network only in its own precision."""
    truth = zoo.model("quadratic")
    x = truth.sample(12, seed=3).x
    guide = zoo.guide("mean_field", latent_dim=1, data_dim=1)
    assert next(guide.parameters()).dtype == torch.float32
    out = diagnose(truth, x, (truth, guide), None, num_draws=100)
    assert out.evidence.n_points == 12 and out.evidence.mean_field.pmo_gap.mean >= -0.01
