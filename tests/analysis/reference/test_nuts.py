"""The NUTS reference against exact answers: the grid (K <= 2) and closed forms (K = 3).

Sizes are small (tens of points, chains of 300 draws after 200 of warm-up), so the tolerances
are the reference's accuracy targets where they are statements about many points (mode masses within
0.05 and log p(x) within 0.02 nats for at least 95% of points), while R-hat, whose noise at 300
draws per chain is about 0.01, is held to 1.02 at the median and 1.05 for 90% of points; the
target R-hat <= 1.01 is measured at full size by ``benchmarks/reference_accuracy.py``.
"""

import math

import arviz as az
import numpy as np
import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis.reference import (
    draws,
    load,
    log_px,
    method,
    modes,
    nuts,
    quality,
    reference_posterior,
    reweight,
    save,
    stats,
)
from pyrofail.errors import UsageError
from pyrofail.models import LatentGaussian, LinearGaussian
from tests.analysis.reference.test_modes import Fold

SMALL = {"num_chains": 4, "num_draws": 1200, "num_warmup": 200}


def _processes():
    return {
        "quadratic": zoo.model("quadratic"),
        # the pre-calibration constants: enough multimodal posteriors for the test
        "figure8": zoo.model("figure8", noise_scale=0.02**0.5, scale=1.0),
        "fold2d": LatentGaussian(Fold(), latent_dim=2, data_dim=2, noise_scale=0.02),
    }


@pytest.fixture(scope="module", params=["quadratic", "figure8", "fold2d"])
def against_grid(request):
    truth = _processes()[request.param]
    x = truth.sample(30, seed=0).x
    grid = reference_posterior(truth, x, "grid", num_draws=4000)
    ref = reference_posterior(truth, x, "nuts", seed=0, **SMALL)
    return request.param, truth, x, grid, ref


def test_nuts_mode_masses_agree_with_the_grid(against_grid):
    name, truth, x, grid, ref = against_grid
    err, labels = modes.reference_mass_error(ref, grid)
    assert (modes.num_modes(labels) > 1).sum() >= 8, "the test needs multimodal posteriors"
    assert (err <= 0.05).double().mean() >= 0.95


def test_nuts_log_marginal_agrees_with_the_grid(against_grid):
    name, truth, x, grid, ref = against_grid
    exact, _ = log_px(grid)
    value, stderr = log_px(ref)
    err = (exact - value).abs()
    assert (err <= 0.02).double().mean() >= 0.95
    # the reported standard error is honest: errors beyond four of them are rare
    assert (err > 4 * stderr + 1e-3).double().mean() <= 0.05


def test_nuts_diagnostics_are_reported(against_grid):
    name, truth, x, grid, ref = against_grid
    d = ref.diagnostics
    # chains in different modes differ by design: R-hat within modes is the one near 1
    assert float(d.rhat_within_modes.median()) <= 1.02
    assert float((d.rhat_within_modes <= 1.05).mean()) >= 0.9
    assert float(d.ess.min()) > 100
    assert float(d.pareto_k.median()) < 0.7
    assert set(d.data_vars) >= {
        "rhat", "rhat_within_modes", "ess", "divergences", "pareto_k", "missing_mass",
        "unrepresented_mass", "mode_mass",
    }  # fmt: skip
    total = d.mode_mass.sum("mode_mass_0") + d.missing_mass
    assert np.allclose(total, 1.0)
    assert ref.sample_stats.diverging.shape == ref.sample_stats.log_weight.shape
    assert method(ref) == "nuts"
    # weighted moments of the draws agree with the grid's exact ones
    mean_err = (ref.moments["mean"] - grid.moments["mean"]).values
    sd = np.sqrt(np.diagonal(grid.moments["cov"].values, axis1=-2, axis2=-1))
    assert np.mean(np.abs(mean_err) <= 0.2 * sd + 0.01) >= 0.95


def test_three_latent_dimensions_against_the_closed_form():
    truth = LinearGaussian(latent_dim=3, data_dim=4, noise_scale=0.3, seed=2)
    x = truth.sample(10, seed=0).x.double()
    ref = reference_posterior(truth, x, seed=1, **SMALL)  # "auto" is NUTS for K = 3
    assert method(ref) == "nuts"
    exact = truth.double().posterior(x)
    value, stderr = log_px(ref)
    err = (value - truth.double().marginal().log_prob(x)).abs()
    assert (err <= 0.02).double().mean() >= 0.9 and bool((err < 4 * stderr + 0.005).all())
    mean = torch.as_tensor(ref.moments["mean"].values)
    sd = exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((mean - exact.mean).abs() / sd).max() < 0.25
    cov = torch.as_tensor(ref.moments["cov"].values)
    assert ((cov - exact.covariance_matrix).abs() / (sd[:, :, None] * sd[:, None, :])).max() < 0.2
    assert (torch.as_tensor(ref.diagnostics.num_modes.values) == 1).all()


def _mode_chains(truth, x, chains_positive, s=500, seed=0):
    """Chains that each stay in one of quadratic's two modes (exact draws from the grid,
    restricted to the mode), as a sampler that never crosses would give: ``(C, S, N, 1)``."""
    from pyrofail.analysis.reference.grid import grid_posterior

    post = grid_posterior(truth, x, num_draws=20 * s, seed=seed)
    out = []
    for positive in chains_positive:
        keep = post.draws[..., 0] > 0 if positive else post.draws[..., 0] < 0
        idx = torch.stack([torch.nonzero(k).flatten()[:s] for k in keep])  # (N, s)
        out.append(post.draws.gather(1, idx[..., None]).transpose(0, 1))
        post = grid_posterior(truth, x, num_draws=20 * s, seed=seed + len(out))
    return torch.stack(out)


def test_reweighting_gives_modes_their_mass_not_their_chain_count():
    truth = zoo.model("quadratic").double()
    x = truth.sample(30, seed=4).x.double()
    x = x[x[:, 0] > 0.05]  # two separated modes of mass 1/2 each
    z = _mode_chains(truth, x, [True, True, True, False])  # three chains in one mode, one in the other
    ref = reweight.from_draws(truth, x, z)
    zn, lw = draws(ref)
    positive = (torch.softmax(lw, -1) * (zn[..., 0] > 0)).sum(-1)
    assert (positive - 0.5).abs().max() < 0.03  # unweighted, the pooled draws would say 0.75
    exact = zoo.model("quadratic")
    from pyrofail.analysis.reference.grid import grid_posterior

    assert (log_px(ref)[0] - grid_posterior(exact, x).log_px).abs().max() < 0.02
    # within modes the chains agree; over all chains they do not (3 in one mode, 1 in the other)
    assert float(ref.diagnostics.rhat_within_modes.max()) < 1.02
    assert float(ref.diagnostics.rhat.min()) > 1.1


def test_a_mode_no_chain_found_is_flagged():
    truth = zoo.model("quadratic").double()
    x = truth.sample(30, seed=5).x.double()
    x = x[x[:, 0] > 0.05]
    z = _mode_chains(truth, x, [True, True, True, True])
    ref = reweight.from_draws(truth, x, z)
    d = ref.diagnostics
    # the optimisation's maxima find the other half of the mass, which no draw represents
    assert bool((abs(d.unrepresented_mass - 0.5) < 0.05).all())
    assert not quality.gate(ref).ok.any()


def test_rhat_and_ess_are_arviz_definitions():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 4, 101, generator=gen, dtype=torch.float64)
    v[1] += torch.linspace(0, 1, 4, dtype=torch.float64)[:, None]  # chains disagree
    v[2] = v[2].cumsum(-1) * 0.1  # random walks
    v[3] = torch.round(v[3] * 2)  # ties
    r, e = stats.rhat(v), stats.ess(v)
    for i in range(5):
        assert float(r[i]) == pytest.approx(az.rhat(v[i].numpy(), method="rank"), rel=1e-10)
        assert float(e[i]) == pytest.approx(az.ess(v[i].numpy(), method="bulk"), rel=1e-10)
    # a mask of whole chains is R-hat over those chains
    mask = torch.zeros(4, 101, dtype=torch.bool)
    mask[[0, 2]] = True
    subset = az.rhat(v[1, [0, 2]].numpy(), method="rank")
    assert float(stats.rhat_within(v[1], mask)) == pytest.approx(subset, rel=1e-10)


@pytest.fixture(scope="module")
def tiny():
    truth = zoo.model("quadratic")
    x = truth.sample(6, seed=1).x
    options = {"num_chains": 2, "num_draws": 100, "num_warmup": 50, "num_importance": 200}
    return truth, x, options


def test_same_seed_same_numbers(tiny):
    truth, x, options = tiny
    a = reference_posterior(truth, x, "nuts", seed=3, **options)
    b = reference_posterior(truth, x, "nuts", seed=3, **options)
    state = torch.get_rng_state()
    c = reference_posterior(truth, x, "nuts", seed=4, **options)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    assert np.array_equal(a.posterior.z.values, b.posterior.z.values)
    assert np.array_equal(a.marginal.log_px.values, b.marginal.log_px.values)
    assert not np.array_equal(a.posterior.z.values, c.posterior.z.values)


def test_jit_compile_and_init_options(tiny):
    truth, x, options = tiny
    ref = reference_posterior(
        truth, x, "nuts", jit_compile=True, init="prior", precondition="block", **options
    )
    assert np.isfinite(ref.posterior.z.values).all()
    start = torch.zeros(2, x.shape[0], 1)
    ref = reference_posterior(truth, x, "nuts", init=start, **options)
    assert np.isfinite(ref.marginal.log_px.values).all()
    assert '"init": "given"' in ref.posterior.attrs["options"]


def test_saved_and_reloaded(tiny, tmp_path):
    truth, x, options = tiny
    ref = reference_posterior(truth, x, "nuts", **options)
    back = load(save(ref, tmp_path / "reference.nc"))
    z, lw = draws(back)
    z0, lw0 = draws(ref)
    assert torch.equal(z, z0) and torch.allclose(lw, lw0)
    assert np.array_equal(back.diagnostics.rhat.values, ref.diagnostics.rhat.values)
    assert method(back) == "nuts" and "sampler" in back.posterior.attrs


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_chains": 1}, "num_chains"),
        ({"num_draws": 0}, "num_draws"),
        ({"target_accept_prob": 1.0}, "target_accept_prob"),
        ({"defensive": 1.0}, "defensive"),
        ({"init": "random"}, "init"),
        ({"init": torch.zeros(3, 2, 1)}, "init"),
        ({"dtype": "float16"}, "dtype"),
        ({"precondition": "dense"}, "precondition"),
        ({"top_up": -1}, "top_up"),
        ({"point_batch": 0}, "point_batch"),
    ],
)
def test_bad_options_are_usage_errors(options, match):
    truth = zoo.model("quadratic")
    with pytest.raises(UsageError, match=match):
        reference_posterior(truth, torch.zeros(2, 1), "nuts", **options)


def test_curvature_scales_are_posterior_variances_for_a_gaussian():
    truth = LinearGaussian(latent_dim=2, data_dim=3, noise_scale=0.2, seed=0).double()
    x = truth.sample(5, seed=0).x.double()
    z = truth.posterior(x).mean[None]
    scales = nuts.curvature_scales(truth, x, z)[0]
    precision = torch.linalg.inv(truth.posterior(x).covariance_matrix)
    assert torch.allclose(scales, 1 / precision.diagonal(dim1=-2, dim2=-1))
    assert math.isfinite(float(scales.sum()))


def test_block_preconditioner_is_the_posterior_scale_for_a_gaussian():
    truth = LinearGaussian(latent_dim=3, data_dim=4, noise_scale=0.2, seed=0).double()
    x = truth.sample(5, seed=0).x.double()
    post = truth.posterior(x)
    tril = nuts.block_preconditioner(truth, x, post.mean[None])[0]
    assert torch.allclose(tril @ tril.transpose(-1, -2), post.covariance_matrix)


# -- posteriors built to mislead a reference --------------------------------------------------
class Line(nn.Module):
    def forward(self, z):
        return z


class Parabola(nn.Module):
    """f(z) = z^2 + 0.3 z: two modes at the roots of f(z) = x, of unequal masses."""

    def forward(self, z):
        return z * z + 0.3 * z


class Step(nn.Module):
    """f(z) = Phi((z - 1.5) / 4e-4), with sigma = 0.01: for x about 4.7 sigma, a broad mode on
    z < 1.5 (f ~ 0 there, a poor fit) holding about half the mass, its peak some 11 nats below
    the narrow peak (width ~4e-5) where f crosses x."""

    def forward(self, z):
        return torch.special.ndtr((z - 1.5) / 4e-4)


class Cubic(nn.Module):
    """f(z) = z^3 - 3 z: three modes for |x| < 2."""

    def forward(self, z):
        return z**3 - 3 * z


def _region_chains(model, x, keep, chains, s=300, seed=0):
    """Chains of exact posterior draws (from the grid) restricted to ``keep(z)``: what a sampler
    that never leaves that region gives, ``(C, S, N, 1)``."""
    from pyrofail.analysis.reference.grid import grid_posterior

    out = []
    for c in range(chains):
        post = grid_posterior(model, x, num_draws=40 * s, seed=seed + c)
        ok = keep(post.draws[..., 0])
        idx = torch.stack([torch.nonzero(k).flatten()[:s] for k in ok])
        out.append(post.draws.gather(1, idx[..., None]).transpose(0, 1))
    return torch.stack(out)


def test_a_narrow_mode_far_from_the_origin_keeps_its_log_marginal():
    """A mode of width 3e-4 at z = 2: kernel distances computed on draws scaled by the mode's
    width but not centred on it lose their digits in single precision."""
    sigma = 3e-4
    model = LatentGaussian(Line(), 1, 1, sigma).double()
    x = torch.tensor([[2.0], [2.1], [-1.9]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    mean, sd = x / (1 + sigma**2), sigma / math.sqrt(1 + sigma**2)  # the posterior, conjugate
    z = mean + sd * torch.randn(4, 300, 3, 1, generator=gen, dtype=torch.float64)
    ref = reweight.from_draws(model, x, z, num_importance=2000)
    exact = torch.distributions.Normal(0.0, math.sqrt(1 + sigma**2)).log_prob(x[:, 0])
    value, stderr = log_px(ref)
    assert bool((stderr < 0.015).all()) and bool(((value - exact).abs() < 4 * stderr + 1e-3).all())


@pytest.mark.slow
def test_a_mode_no_chain_visits_keeps_its_mass():
    """Every chain in one of two narrow modes: the optimisation's maxima give the other one its
    component, its mass is estimated, and it is reported as mass no draw represents."""
    from pyrofail.analysis.reference.grid import grid_posterior

    model = LatentGaussian(Parabola(), 1, 1, 1e-3).double()
    x = torch.tensor([[3.5], [4.0], [4.5]], dtype=torch.float64)
    z = _region_chains(model, x, lambda z: z > 0, chains=4)
    ref = reweight.from_draws(model, x, z, num_importance=2000)
    exact = grid_posterior(model, x, regions=[lambda z: z[:, 0] < 0])
    d = ref.diagnostics
    assert (log_px(ref)[0] - exact.log_px).abs().max() < 0.02
    assert (torch.as_tensor(d.unrepresented_mass.values) - exact.region_mass[:, 0]).abs().max() < 0.03
    total = torch.as_tensor(d.mode_mass.values).sum(-1) + torch.as_tensor(d.missing_mass.values)
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64))
    assert float(d.rhat.max()) < 1.05  # the chains agree: the diagnostics of the draws cannot see it


def test_mass_no_component_explains_is_missing_not_renormalised_away():
    """Draws in the two narrow peaks only and no maxima to add components: the broad heavy mode
    is found by the prior component alone, and the mode masses leave its share to missing_mass."""
    from pyrofail.analysis.reference.grid import grid_posterior

    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.044], [0.046], [0.048]], dtype=torch.float64)
    z = _region_chains(model, x, lambda z: z > 1.49, chains=4)
    ref = reweight.from_draws(model, x, z, num_importance=2000, maxima=False)
    broad = grid_posterior(model, x, regions=[lambda z: z[:, 0] < 1.49]).region_mass[:, 0]
    d = ref.diagnostics
    missing = torch.as_tensor(d.missing_mass.values)
    assert (missing - broad).abs().max() < 0.05 and bool((broad > 0.15).all())
    total = torch.as_tensor(d.mode_mass.values).sum(-1) + missing
    assert torch.allclose(total, torch.ones(3, dtype=torch.float64))


SIZES_HARD = {"num_chains": 2, "num_draws": 600, "num_warmup": 200, "num_importance": 2000}


@pytest.mark.slow
def test_chains_start_by_mass_not_by_peak_height():
    """The broad mode's peak is 10.4 to 11.4 nats below the narrow one's, but it holds 14-30% of
    the mass: it gets a chain. The narrow peak's basin is too thin for the optimisation to land
    in and NUTS cannot follow the step's wall (divergences), so the reference is wrong here, but
    never silently: the gate fails every wrong point."""
    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.049], [0.050], [0.051]], dtype=torch.float64)
    z0 = nuts.initial_points(model, x, 2)[..., 0]  # (C, N)
    assert bool((z0 < 1.49).any(0).all())
    grid = reference_posterior(model, x, "grid", num_draws=4000)
    ref = reference_posterior(model, x, "nuts", seed=0, **SIZES_HARD)
    err, _ = modes.reference_mass_error(ref, grid)
    wrong = (err > 0.05) | ((log_px(ref)[0] - log_px(grid)[0]).abs() > 0.05)
    assert not bool((wrong & quality.gate(ref).ok).any())


@pytest.mark.slow
def test_more_modes_than_chains_each_get_a_chain():
    model = LatentGaussian(Cubic(), 1, 1, 0.05).double()
    x = torch.tensor([[-1.0], [0.0], [0.5], [1.0]], dtype=torch.float64)
    grid = reference_posterior(model, x, "grid", num_draws=4000)
    ref = reference_posterior(model, x, "nuts", seed=0, **SIZES_HARD)
    err, labels = modes.reference_mass_error(ref, grid)
    assert (modes.num_modes(labels) == 3).all()
    assert float(err.max()) < 0.05
    assert ref.posterior.sizes["chain"] >= 3
    assert float(ref.diagnostics.unrepresented_mass.max()) < 0.01


def test_extra_candidates_reach_a_mode_the_random_starts_miss():
    from pyrofail.analysis.reference.maxima import find_maxima

    model = LatentGaussian(Parabola(), 1, 1, 1e-3).double()
    x = torch.tensor([[4.0]], dtype=torch.float64)
    roots = torch.tensor([-2.1559, 1.8559], dtype=torch.float64)  # of z^2 + 0.3 z = 4
    # one random start reaches one root; a guide's draw near the other reaches that one too
    found = find_maxima(model, x, candidates=1, extra=torch.tensor([[[-1.5]], [[1.5]]]), seed=0)
    z = found.z[0, found.valid[0], 0]
    assert all(bool((z - r).abs().min() < 1e-3) for r in roots)
