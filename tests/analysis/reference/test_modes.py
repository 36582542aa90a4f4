"""Mode finding against posteriors whose modes are known exactly.

Tolerances: with S equally weighted draws a mode of mass p is estimated with standard error
sqrt(p (1 - p) / S), 0.008 for S = 4000 and p = 0.5; masses are asserted within 0.03 (almost
four standard errors).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis.reference import draws, modes, reference_posterior
from pyrofail.analysis.reference.grid import grid_posterior
from pyrofail.errors import UsageError
from pyrofail.models import LatentGaussian, LinearGaussian

MASS_TOL = 0.03


@pytest.fixture(scope="module")
def quadratic_ref():
    truth = zoo.model("quadratic")
    x = truth.sample(60, seed=0).x
    return truth, x, reference_posterior(truth, x, "grid", num_draws=4000)


@pytest.mark.parametrize("use_density", [True, False], ids=["posterior-density", "kernel-estimate"])
def test_quadratic_has_two_modes_of_mass_one_half(quadratic_ref, use_density):
    truth, x, ref = quadratic_ref
    z, lw = draws(ref)
    if use_density:
        centres, labels = modes.reference_modes(ref)
    else:
        centres, labels = modes.find_modes(z, lw)
    clear = x[:, 0] > 5 * float(truth.noise_scale)  # the valley at z = 0 is deep
    assert clear.sum() >= 20
    assert (modes.num_modes(labels)[clear] == 2).all()
    masses = modes.mode_masses(z, centres, labels, lw)
    assert (masses[clear, :2] - 0.5).abs().max() < MASS_TOL
    # the two modes are z < 0 and z > 0: every draw's label follows its sign
    lab = modes.assign(z, centres, labels)[clear]
    neg = z[clear, :, 0] < 0
    agree = (lab == lab[:, :1]) == (neg == neg[:, :1])
    assert agree.double().mean() > 0.999


def _exact_modes_1d(model, x, dip=modes.DIP, min_mass=modes.MIN_MASS):
    """Masses of the persistent modes of each 1-D posterior from its density on a fine grid,
    by the definition of :mod:`pyrofail.analysis.reference.modes` applied to the exact density."""
    z = torch.linspace(-8, 8, 32001, dtype=torch.float64)[:, None]
    dens = torch.softmax(model.double().log_joint(z[:, None, :], x.double()[None]).T, -1).numpy()
    out = []
    for d in dens:
        inner = np.nonzero((d[1:-1] >= d[:-2]) & (d[1:-1] > d[2:]))[0] + 1
        cuts = [int(np.argmin(d[a : b + 1]) + a) for a, b in zip(inner[:-1], inner[1:])]
        bounds = [0, *cuts, len(d)]
        basins = [[d[a:b].max(), d[a:b].sum()] for a, b in zip(bounds[:-1], bounds[1:])]
        passes = [d[c] for c in cuts]
        while len(basins) > 1:  # persistence
            ratio = [p / min(basins[i][0], basins[i + 1][0]) for i, p in enumerate(passes)]
            i = int(np.argmax(ratio))
            if ratio[i] < dip:
                break
            basins[i] = [max(basins[i][0], basins[i + 1][0]), basins[i][1] + basins[i + 1][1]]
            del basins[i + 1], passes[i]
        while len(basins) > 1:  # light basins join the neighbour with the higher pass
            i = int(np.argmin([b[1] for b in basins]))
            if basins[i][1] >= min_mass:
                break
            side = [(passes[i - 1], i - 1)] if i > 0 else []
            side += [(passes[i], i + 1)] if i < len(basins) - 1 else []
            j = max(side)[1]
            a, b = min(i, j), max(i, j)
            basins[a] = [max(basins[a][0], basins[b][0]), basins[a][1] + basins[b][1]]
            del basins[b], passes[a]
        out.append(sorted((b[1] for b in basins), reverse=True))
    return out


def test_figure8_modes_match_the_exact_density():
    # the pre-calibration constants (sigma/s = 0.14): more points near the crossing, so more
    # multimodal posteriors than at the default sigma/s = 0.1
    truth = zoo.model("figure8", noise_scale=0.02**0.5, scale=1.0)
    x = truth.sample(100, seed=1).x
    exact = _exact_modes_1d(truth, x)
    assert sum(len(e) > 1 for e in exact) > 20  # the test needs multimodal posteriors
    ref = reference_posterior(truth, x, "grid", num_draws=4000)
    z, lw = draws(ref)
    centres, labels = modes.reference_modes(ref)
    found = modes.mode_masses(z, centres, labels, lw)
    n_found = modes.num_modes(labels)
    agree = [
        n_found[i] == len(e) and float((found[i, : len(e)] - torch.tensor(e)).abs().max()) < MASS_TOL
        for i, e in enumerate(exact)
    ]
    # disagreements are modes near the min_mass threshold, where 4000 draws cannot decide
    assert np.mean(agree) >= 0.9


def test_unimodal_posteriors_have_one_mode():
    truth = LinearGaussian(latent_dim=2, data_dim=3, noise_scale=0.5, seed=1)
    x = truth.sample(40, seed=0).x
    ref = reference_posterior(truth, x, "grid", num_draws=2000)
    z, lw = draws(ref)
    assert (modes.num_modes(modes.reference_modes(ref)[1]) == 1).all()
    assert (modes.num_modes(modes.find_modes(z, lw)[1]) == 1).all()


class Fold(nn.Module):
    """f(z) = ((Phi(z_1) - 1/2)^2, z_2): symmetric in z_1, so every posterior has two modes of
    equal mass, z_1 < 0 and z_1 > 0 (when x_1 is well above the noise)."""

    def forward(self, z):
        return torch.stack(((torch.special.ndtr(z[..., 0]) - 0.5) ** 2, z[..., 1]), -1)


def test_two_dimensional_bimodal_posteriors():
    truth = LatentGaussian(Fold(), latent_dim=2, data_dim=2, noise_scale=0.02)
    x = truth.sample(40, seed=0).x
    ref = reference_posterior(truth, x, "grid", num_draws=4000)
    z, lw = draws(ref)
    centres, labels = modes.reference_modes(ref)
    clear = x[:, 0] > 5 * 0.02
    assert clear.sum() >= 10
    assert (modes.num_modes(labels)[clear] == 2).all()
    masses = modes.mode_masses(z, centres, labels, lw)
    assert (masses[clear, :2] - 0.5).abs().max() < MASS_TOL


def _three_blobs(n, s, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0, 0], [3, 0, 0], [0, 3, 1]], dtype=torch.float64)
    scale = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    probs = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    comp = torch.multinomial(probs.expand(n, 3), s, replacement=True, generator=gen)
    z = centres[comp] + scale[comp, None] * torch.randn(n, s, 3, generator=gen, dtype=torch.float64)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs),
        torch.distributions.Independent(torch.distributions.Normal(centres, scale[:, None].expand(3, 3)), 1),
    )
    return z, comp, probs, mix.log_prob(z)


def test_three_modes_in_three_dimensions_with_their_masses():
    z, comp, probs, log_density = _three_blobs(20, 4000)
    centres, labels = modes.find_modes(z, log_density=log_density)
    assert (modes.num_modes(labels) == 3).all()
    masses = modes.mode_masses(z, centres, labels)
    assert (masses - probs).abs().max() < MASS_TOL
    # weighted draws: weights 1 / p_k make the three modes equally heavy
    lw = -probs[comp].log()
    centres, labels = modes.find_modes(z, lw, log_density=log_density)
    assert (modes.num_modes(labels) == 3).all()
    assert (modes.mode_masses(z, centres, labels, lw) - 1 / 3).abs().max() < MASS_TOL


def test_another_distribution_is_measured_on_the_reference_modes(quadratic_ref):
    truth, x, ref = quadratic_ref
    i = int(torch.argmax(x[:, 0]))  # a point with two clear modes
    z, lw = draws(ref)
    centres, labels = modes.find_modes(z[i], lw[i])
    positive = z[i][z[i, :, 0] > 0]
    negative = z[i][z[i, :, 0] < 0]
    pos_label = int(modes.assign(positive[:1], centres, labels))
    # a distribution that keeps one mode only, and one that puts 0.8 on the positive mode
    only = modes.mode_masses(positive, centres, labels)
    assert float(only[pos_label]) == pytest.approx(1.0)
    mixed = torch.cat([positive[:800], negative[:200]])
    masses = modes.mode_masses(mixed, centres, labels)
    assert float(masses[pos_label]) == pytest.approx(0.8, abs=1e-12)
    # log weights count: uniform weights on the positive draws, none on the negative ones
    lw_mixed = torch.cat([torch.zeros(800), torch.full((200,), -math.inf)])
    assert float(modes.mode_masses(mixed, centres, labels, lw_mixed)[pos_label]) == pytest.approx(1.0)


def test_batched_equals_one_point_at_a_time():
    # 400 equally weighted draws are their own representatives, so labels must be identical
    z, _, _, log_density = _three_blobs(3, modes.MAX_DRAWS, seed=1)
    _, labels = modes.find_modes(z, log_density=log_density)
    for i in range(3):
        _, lab = modes.find_modes(z[i], log_density=log_density[i])
        assert torch.equal(lab, labels[i])


def test_same_seed_same_modes():
    z, _, _, _ = _three_blobs(4, 2000, seed=2)
    a = modes.find_modes(z, seed=5)
    b = modes.find_modes(z, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mode_masses_of_draws_agree_with_exact_region_masses():
    """On quadratic the modes are z < 0 and z > 0, whose exact masses the grid integrates."""
    truth = zoo.model("quadratic")
    x = truth.sample(40, seed=3).x
    x = x[x[:, 0] > 0.05]
    post = grid_posterior(truth, x, num_draws=4000, regions=[lambda z: z[:, 0] < 0])
    centres, labels = modes.find_modes(post.draws)
    masses = modes.mode_masses(post.draws, centres, labels)
    lowest = post.draws.gather(1, post.draws[..., :1].argmin(1, keepdim=True).expand(-1, -1, 1))
    neg_label = modes.assign(lowest, centres, labels)[:, 0]
    exact = post.region_mass[:, 0]
    assert (masses.gather(1, neg_label[:, None])[:, 0] - exact).abs().max() < MASS_TOL


@pytest.mark.parametrize(
    "kwargs, match",
    [({"dip": 0.0}, "dip"), ({"min_mass": 1.0}, "min_mass"), ({"max_draws": 2}, "max_draws")],
)
def test_bad_options_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        modes.find_modes(torch.randn(100, 1), **kwargs)


def test_bad_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="shape"):
        modes.find_modes(torch.randn(100))
    with pytest.raises(UsageError, match="log_weights"):
        modes.find_modes(torch.randn(100, 1), torch.zeros(99))
    with pytest.raises(UsageError, match="log_density"):
        modes.find_modes(torch.randn(100, 1), log_density=torch.zeros(99))


@pytest.mark.parametrize("width", [0.01, 3e-4])
@pytest.mark.parametrize("use_density", [True, False], ids=["posterior-density", "kernel-estimate"])
def test_one_narrow_gaussian_far_from_the_origin_is_one_mode(width, use_density):
    """Distances between draws at z = 2 that differ by a fraction of ``width``: single precision
    and the matrix-product distance formula lose them, and split one Gaussian in two."""
    gen = torch.Generator().manual_seed(0)
    z = 2.0 + width * torch.randn(50, 400, 1, generator=gen, dtype=torch.float64)
    density = -0.5 * ((z[..., 0] - 2.0) / width) ** 2 if use_density else None
    _, labels = modes.find_modes(z, log_density=density)
    assert (modes.num_modes(labels) == 1).all()


def test_assign_resolves_centres_closer_than_single_precision_at_their_distance_from_zero():
    centres = 2.0 + 1e-4 * torch.arange(64, dtype=torch.float64)[:, None]  # (M, 1)
    labels = torch.arange(64)
    samples = centres + 3e-5  # each nearest to its own centre
    assert torch.equal(modes.assign(samples, centres, labels), labels)
