"""compare() against closed forms: linear-Gaussian posteriors, quadratic's two equal modes."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyrofail import zoo
from pyrofail.analysis import compare, reference_posterior
from pyrofail.analysis.compare import pareto_k_threshold
from pyrofail.analysis.reference.modes import reference_modes
from pyrofail.guides.base import AmortizedGuide
from pyrofail.models import LinearGaussian
from tests.guides.exact import ExactPosteriorGuide

# Monte Carlo tolerances on means over the points: 1000 guide draws and 1000 grid draws per
# point give per-point errors of a few hundredths; the means over 30 points are within 0.02.
MEAN_TOL = 0.02


class TableGuide(AmortizedGuide):
    """q(z | x_n) = N(loc_n, scale_n^2) for the n-th row of the x it was built for."""

    def __init__(self, loc, scale):
        super().__init__()
        self.loc, self.scale = torch.as_tensor(loc), torch.as_tensor(scale)
        self.latent_dim, self.data_dim, self.restarts = self.loc.shape[-1], None, None

    def distribution(self, x):
        return dist.Normal(self.loc.to(x), self.scale.to(x)).to_event(1)


class BoxGuide(AmortizedGuide):
    """q(z | x) uniform on [-0.1, 0.1]^K: no density where the posterior has mass."""

    def __init__(self, k):
        super().__init__()
        self.latent_dim, self.data_dim, self.restarts = k, None, None

    def distribution(self, x):
        half = torch.full((x.shape[0], self.latent_dim), 0.1, dtype=x.dtype)
        return dist.Uniform(-half, half, validate_args=False).to_event(1)


def _abs_normal_mean(d, t):
    """E|N(d, t^2)|."""
    centred = t * math.sqrt(2 / math.pi) * torch.exp(-(d**2) / (2 * t**2))
    return centred + d * (1 - 2 * torch.special.ndtr(-d / t))


@pytest.fixture(scope="module")
def one_d():
    truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=3).double()
    x = truth.sample(30, seed=0).x.double()
    ref = reference_posterior(truth, x, "grid", num_draws=1000)
    return truth, x, ref, reference_modes(ref)


@pytest.mark.parametrize("scale_factor, shift", [(1.3, 0.2), (0.6, 0.0)])
def test_kl_energy_and_elbo_match_closed_forms(one_d, scale_factor, shift):
    truth, x, ref, modes = one_d
    guide = ExactPosteriorGuide(truth, scale_factor=scale_factor, shift=shift)
    out = compare(truth, guide, x, reference=ref, modes=modes)
    pp, mean = out["model"]["per_point"], out["model"]["mean"]
    q, p = guide.distribution(x), truth.posterior(x)
    reverse, forward = kl_divergence(q, p), kl_divergence(p, q)
    log_px = truth.marginal().log_prob(x)
    assert torch.allclose(pp["log_px"], log_px, atol=1e-4)
    assert mean["pmo_gap"] == pytest.approx(float(reverse.mean()), abs=MEAN_TOL)
    assert torch.equal(pp["reverse_kl"], pp["pmo_gap"])
    assert mean["elbo"] == pytest.approx(float((log_px - reverse).mean()), abs=MEAN_TOL)
    assert mean["forward_kl"] == pytest.approx(float(forward.mean()), abs=MEAN_TOL)
    # energy: Y ~ q, Z ~ p one-dimensional Gaussians, E|Y - Z| = E|N(m_q - m_p, s_q^2 + s_p^2)|
    sq, sp = q.stddev[:, 0], p.stddev[:, 0]
    e_yz = _abs_normal_mean(q.mean[:, 0] - p.mean[:, 0], (sq**2 + sp**2).sqrt())
    distance = 2 * e_yz - 2 * sq / math.sqrt(math.pi) - 2 * sp / math.sqrt(math.pi)
    score = e_yz - sq / math.sqrt(math.pi)
    assert mean["energy_distance"] == pytest.approx(float(distance.mean()), abs=MEAN_TOL)
    assert mean["energy_score"] == pytest.approx(float(score.mean()), abs=MEAN_TOL)


def test_two_dimensional_kls_match_closed_forms():
    truth = LinearGaussian().double()  # K = 2, correlated posterior
    x = truth.sample(20, seed=1).x.double()
    guide = ExactPosteriorGuide(truth, scale_factor=1.2, shift=-0.1)
    out = compare(truth, guide, x, method="grid")
    q, p = guide.distribution(x), truth.posterior(x)
    assert out["reference_method"] == "grid"
    assert out["model"]["mean"]["pmo_gap"] == pytest.approx(float(kl_divergence(q, p).mean()), abs=MEAN_TOL)
    assert out["model"]["mean"]["forward_kl"] == pytest.approx(
        float(kl_divergence(p, q).mean()), abs=MEAN_TOL
    )


def test_the_exact_posterior_has_no_bias(one_d):
    truth, x, ref, modes = one_d
    out = compare(truth, ExactPosteriorGuide(truth), x, reference=ref, modes=modes)
    pp = out["model"]["per_point"]
    # log w = log p(x, z) - log p(z | x) = log p(x) at every draw: exact up to the quadrature
    assert pp["pmo_gap"].abs().max() < 1e-4
    assert pp["forward_kl"].abs().max() < 1e-4
    assert abs(out["model"]["mean"]["energy_distance"]) < 0.01
    assert torch.all(pp["pareto_k"] == -math.inf)  # constant weights have no tail
    assert out["model"]["mean"]["pareto_k_bad_share"] == 0.0


def test_pareto_k_follows_the_tail_of_the_weights(one_d):
    """Target N(m, s^2), proposal N(m, (c s)^2) with c < 1: the weights have a Pareto tail of
    shape k = 1 - c^2 (0.64 for c = 0.6); with c > 1 they are bounded (k < 0.5)."""
    truth, x, ref, modes = one_d
    narrow = compare(truth, ExactPosteriorGuide(truth, scale_factor=0.6), x, reference=ref, modes=modes)
    assert float(narrow["model"]["per_point"]["pareto_k"].median()) == pytest.approx(0.64, abs=0.1)
    wide = compare(truth, ExactPosteriorGuide(truth, scale_factor=1.3), x, reference=ref, modes=modes)
    assert float(wide["model"]["per_point"]["pareto_k"].max()) < 0.5
    assert pareto_k_threshold(1000) == pytest.approx(2 / 3)
    assert pareto_k_threshold(10**6) == 0.7


def test_mode_mass_error_sees_a_dropped_mode():
    """Quadratic: every posterior has two modes of mass exactly 1/2 at z = +-z*. A guide on the
    positive mode has mode-mass error 1/2 (however the finder splits the modes, since the guide
    has the mode's shape); a symmetric guide over both has about 0."""
    truth = zoo.model("quadratic").double()
    x = torch.tensor([[0.05], [0.1], [0.15], [0.2]], dtype=torch.float64)
    z_star = torch.special.ndtri(0.5 + x.sqrt())  # Phi(z*) - 1/2 = sqrt(x)
    ref = reference_posterior(truth, x, "grid", num_draws=1000)
    width = 0.01 / (2 * x.sqrt() * torch.exp(-0.5 * z_star**2) / math.sqrt(2 * math.pi))  # sigma / f'(z*)
    modes = reference_modes(ref)
    one = compare(truth, TableGuide(z_star, width), x, reference=ref, modes=modes)
    half = torch.full((4,), 0.5, dtype=torch.float64)
    assert torch.allclose(one["model"]["per_point"]["mode_mass_error"], half, atol=0.05)
    # reverse KL hides the dropped mode: about log 2, the same as for any one-mode fit
    log2 = torch.full((4,), math.log(2), dtype=torch.float64)
    assert torch.allclose(one["model"]["per_point"]["pmo_gap"], log2, atol=0.1)
    # the two true modes, given exactly (independent of the mode finder): a guide symmetric
    # about 0 puts half its mass on each, as the posterior does
    exact = (torch.stack([torch.stack((-z, z))[:, None] for z in z_star[:, 0]]), torch.tensor([[0, 1]] * 4))
    both = compare(truth, TableGuide(torch.zeros_like(x), 2 * z_star), x, reference=ref, modes=exact)
    assert float(both["model"]["per_point"]["mode_mass_error"].max()) < 0.06
    assert torch.all(both["model"]["per_point"]["n_modes"] == 2)


def test_forward_kl_is_infinite_where_the_guide_has_no_density(one_d):
    truth, x, ref, modes = one_d
    out = compare(truth, BoxGuide(1), x, reference=ref, modes=modes)
    assert torch.all(out["model"]["per_point"]["forward_kl"] == math.inf)
    assert torch.all(torch.isfinite(out["model"]["per_point"]["pmo_gap"]))


def test_mleo_per_point_is_the_difference_of_the_two_log_marginals(one_d):
    """A model other than the truth: the per-point MLEO is log p_GT(x) - log p_theta(x), each
    p(x) Gaussian in closed form (the grid references are exact to 1e-6 here)."""
    truth, x, ref_truth, modes_truth = one_d
    model = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.4, seed=5).double()
    ref = reference_posterior(model, x, "grid", num_draws=1000)
    guide = ExactPosteriorGuide(model, scale_factor=1.0)
    out = compare(model, guide, x, ref, truth, truth_reference=ref_truth, truth_modes=modes_truth)
    exact = truth.marginal().log_prob(x) - model.marginal().log_prob(x)
    assert torch.allclose(out["mleo"]["per_point"], exact, atol=1e-5)
    assert out["mleo"]["stderr"] == pytest.approx(float(exact.std() / math.sqrt(30)), rel=1e-4)


def test_against_the_truth_itself_and_reproducible(one_d):
    truth, x, ref, modes = one_d
    guide = ExactPosteriorGuide(truth, scale_factor=1.3, shift=0.2)
    kw = dict(reference=ref, truth=truth, truth_reference=ref, modes=modes, truth_modes=modes)
    a = compare(truth, guide, x, **kw)
    b = compare(truth, guide, x, **kw)
    for key, value in a["model"]["per_point"].items():
        assert torch.equal(value, b["model"]["per_point"][key]), key
        assert torch.equal(value, a["truth"]["per_point"][key]), key  # same model, same numbers
    # the model's posterior is the truth's: the latent space did not move
    assert abs(a["truth"]["mean"]["posterior_shift"]) < 0.01


def test_truth_side_is_left_out_when_latent_dimensions_differ(one_d):
    truth, x, ref, modes = one_d
    other = LinearGaussian(latent_dim=2, data_dim=2, noise_scale=0.5, seed=4).double()
    out = compare(other, ExactPosteriorGuide(other), x, method="grid", truth=truth, truth_reference=ref)
    # K differs: the guide cannot be compared with the truth's posterior, only p(x)
    assert out["truth"] is None
    assert out["mleo"]["mean"] == pytest.approx(
        float((truth.marginal().log_prob(x) - other.marginal().log_prob(x)).mean()), abs=1e-4
    )


def test_chosen_points_span_the_score():
    from pyrofail.analysis.figures.posterior import choose_points

    score = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
    assert choose_points(score, 3) == [1, 3, 2]  # highest, median, lowest
    assert choose_points(torch.zeros(2), 4) == [0, 1]  # no repeats


def test_posterior_figures_are_written(one_d, tmp_path):
    from pyrofail.analysis.figures import posterior as pp

    truth, x, ref, _ = one_d
    guide = ExactPosteriorGuide(truth, scale_factor=1.3)
    fits = [("exact model, wide guide", truth, guide, ref)]
    a = pp.posterior_figure(tmp_path / "posterior.png", truth, ref, [0, 5], fits, title="lg")
    gaps = {"wide guide": torch.rand(30, dtype=torch.float64)}
    b = pp.pmo_gap_figure(tmp_path / "gap.png", x, gaps, marked=x[[0, 5]], truth=truth, title="lg")
    for path in (a, b):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- streaming in bounded memory (pyrofail.memory) ------------------------------------------


@pytest.fixture(scope="module")
def many():
    """150 points (three blocks of 64): enough for a small budget to take several chunks."""
    truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=3).double()
    x = truth.sample(150, seed=5).x.double()
    ref = reference_posterior(truth, x, "grid", num_draws=200)
    return truth, x, ref, reference_modes(ref)


@pytest.fixture
def unchunked(monkeypatch):
    """Lift the cap on a chunk (pyrofail.memory.MAX_CHUNK_BYTES), so that a 1 TiB budget takes
    every point in one chunk: the computation as it was before streaming."""
    from pyrofail import memory

    monkeypatch.setattr(memory, "MAX_CHUNK_BYTES", 2**50)


def test_compare_is_the_same_for_every_budget(many, unchunked):
    """A 4 MiB working set takes the 150 points 64 at a time (three chunks), one chunk takes
    them all: every per-point quantity, for the model and against the truth, is the same to
    float rounding (each block of 64 points draws from its own seed, whatever the chunk)."""
    truth, x, ref, modes = many
    guide = ExactPosteriorGuide(truth, scale_factor=1.3, shift=0.1)
    kw = dict(
        reference=ref, truth=truth, truth_reference=ref, modes=modes, truth_modes=modes, num_samples=300
    )
    small, large = (
        compare(truth, guide, x, budget="16MiB", **kw),
        compare(truth, guide, x, budget="1TiB", **kw),
    )
    for side in ("model", "truth"):
        for key, value in large[side]["per_point"].items():
            assert torch.allclose(
                small[side]["per_point"][key], value, rtol=1e-6, atol=1e-6, equal_nan=True
            ), key
    assert small["model"]["mean"] == pytest.approx(large["model"]["mean"], rel=1e-6)


def test_best_mean_field_is_the_same_for_every_budget(many, unchunked):
    """KL* optimises every point's starts on their own: chunks of points (4 MiB) give the
    numbers of one batch."""
    from pyrofail.analysis.hardness import best_mean_field

    truth, x, ref, modes = many
    a = best_mean_field(truth, x, ref, modes=modes, steps=40, budget="16MiB")
    b = best_mean_field(truth, x, ref, modes=modes, steps=40, budget="1TiB")
    assert torch.allclose(a["kl"], b["kl"], atol=1e-8) and torch.allclose(a["loc"], b["loc"], atol=1e-8)
