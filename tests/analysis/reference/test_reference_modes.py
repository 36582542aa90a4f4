"""The NUTS reference where its modes are hard to get right: the issue's validation cases, small.

Each test pins one way the reference used to get mode masses wrong (``benchmarks/
reference_validation.py`` measures them at full size):

* draws of separate chains in separate modes, with the valleys between them empty, were joined
  into one mode by graph edges that spanned the valleys (the many-modes K = 2 case: 1 mode found
  where the grid has 6), so the draws' weights followed the chains, not the masses;
* a point in a valley next to a maximum no chain visited "covered" that maximum;
* a mode no optimisation start reached (found by importance draws outside every known maximum),
  and a needle on a cliff that only the sampler's divergent steps run into;
* importance draws in the tail of a mode found counted as mass outside every mode.
"""

import math

import pytest
import torch
from torch import nn

from pyrofail.analysis.reference import log_px, modes, reference_posterior, reweight
from pyrofail.analysis.reference import maxima as mx
from pyrofail.analysis.reference import starts as starts_mod
from pyrofail.models import LatentGaussian
from tests.analysis.reference.test_nuts import Parabola, Step


class Sines(nn.Module):
    """f(z) = (sin 2.5 z_1, sin 2.5 z_2): with sigma = 0.1, a dozen modes or so."""

    def forward(self, z):
        return torch.sin(2.5 * z)


def _mixture(centres, sd):
    """The log density of an equal mixture of isotropic Gaussians at ``centres`` ``(C, K)``."""

    def log_density(z):
        d2 = (z[..., None, :] - centres).square().sum(-1)
        return torch.logsumexp(-0.5 * d2 / sd**2, -1)

    return log_density


def test_chains_in_separate_modes_stay_separate_modes():
    """Nine narrow modes a unit apart and a tenth of 1% of the draws, 40 draws in each: the
    neighbour graph's bandwidth spans the clusters, but the density along its edges between
    them falls to nothing, so each cluster is its own mode, the light one too."""
    grid = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).reshape(-1, 2)
    centres = torch.cat([grid, torch.tensor([[5.0, 5.0]])]).double()
    density = _mixture(centres, 0.05)
    gen = torch.Generator().manual_seed(0)
    counts = [40] * 9 + [4]
    z = torch.cat(
        [c + 0.05 * torch.randn(n, 2, generator=gen, dtype=torch.float64) for c, n in zip(centres, counts)]
    )
    truth = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    _, labels = modes.find_modes(z, log_density=density(z), segment=lambda seg, point: density(seg))
    assert int(modes.num_modes(labels)) == 10
    # one label per cluster, and different clusters different labels
    assert all(len(set(labels[truth == c].tolist())) == 1 for c in range(10))
    assert len({int(labels[truth == c][0]) for c in range(10)}) == 10


def test_a_valley_point_does_not_cover_the_maximum_beyond_it():
    """Representatives around one root of z^2 + 0.3 z = 4 and one on the slope of the other
    root, 12 of its widths down: the way down from that root to it never dips below it, but it
    is far outside the root's Laplace ball, so the root is a mode no chain visited."""
    model = LatentGaussian(Parabola(), 1, 1, 1e-3).double()
    x = torch.tensor([[4.0]], dtype=torch.float64)
    found = mx.find_maxima(model, x, candidates=8, seed=0)
    assert int(found.valid.sum()) == 2
    a, b = found.z[0, 0, 0], found.z[0, 1, 0]
    width = float(found.tril[0, 1, 0, 0])
    pooled = torch.cat([a + width * torch.linspace(-1, 1, 20, dtype=torch.float64), (b - 12 * width)[None]])
    pooled = pooled.reshape(1, -1, 1)
    lp = model.log_joint(pooled.transpose(0, 1), x).T
    lab = torch.zeros(1, pooled.shape[1], dtype=torch.long)
    group = reweight.cover(model, x, pooled, lp, lab, found)
    assert group[0, :2].tolist() == [0, -1]


def test_importance_draws_outside_the_known_maxima_find_the_missed_ones():
    """Sixteen optimisation starts on posteriors with a dozen modes miss much of the mass; the
    importance draws that no known maximum explains start the search again, and the maxima then
    found hold nearly all the Laplace mass of 128 starts."""
    model = LatentGaussian(Sines(), 2, 2, 0.1).double()
    x = model.sample(8, seed=0).x.double()
    many = mx.find_maxima(model, x, candidates=128, seed=0)
    few = mx.find_maxima(model, x, candidates=16, seed=0)
    refined = mx.refine_maxima(model, x, few, seed=0)

    def missed(found):
        # the share of the 128 starts' Laplace mass at maxima more than 1e-3 from every one found
        d = (many.z[:, :, None] - found.z[:, None]).norm(dim=-1).masked_fill(~found.valid[:, None], math.inf)
        gone = many.valid & (d.amin(-1) > 1e-3)
        return (many.shares() * gone).sum(-1)

    before, after = missed(few), missed(refined)
    assert float(before.mean()) > 0.3
    assert float(after.mean()) < 0.05 and bool((after <= before + 1e-9).all())


def test_a_divergent_step_across_a_cliff_finds_the_needle_on_it():
    """f(z) = Phi((z - 1.5) / 4e-4): the peak where f(z) = x is 4e-5 wide and no gradient
    leads to it from afar; a leapfrog step that jumped across the cliff holds it, and Newton
    steps from the best point along the step reach it."""
    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.045], [0.05], [0.053]], dtype=torch.float64)
    needle = 1.5 + 4e-4 * torch.special.ndtri(x[:, 0])
    found = mx.find_maxima(model, x, candidates=32, seed=0)
    assert bool(((found.z[..., 0] - needle[:, None]).abs().masked_fill(~found.valid, math.inf) > 1e-3).all())
    point = torch.tensor([0, 1, 2, 2])
    start = torch.tensor([[1.41], [1.47], [1.2], [0.5]], dtype=torch.float64)
    end = torch.tensor([[1.52], [1.6], [1.55], [0.9]], dtype=torch.float64)  # the last misses it
    starts, rows = mx.along_segments(model, x, [(point, start, end)])
    assert rows.tolist() == [0, 1, 2]
    added = mx.add_starts(model, x, found, starts, rows, steps=0)
    gap = (added.z[..., 0] - needle[:, None]).abs().masked_fill(~added.valid, math.inf).amin(-1)
    assert float(gap.max()) < 1e-6


def test_top_up_starts_at_the_uncovered_maxima_by_mass():
    z = torch.tensor([[[0.0], [1.0], [2.0], [3.0]], [[5.0], [6.0], [7.0], [8.0]]])
    log_mass = torch.tensor([[0.0, -1.0, -2.0, -30.0], [0.0, -1.0, -2.0, -3.0]])
    found = mx.Maxima(
        z, torch.zeros(2, 4), log_mass, torch.ones(2, 4, 1, 1), torch.ones(2, 4, dtype=torch.bool)
    )
    uncovered = torch.tensor([[False, True, True, True], [False, False, False, False]])
    starts = starts_mod.top_up_points(found, uncovered, max_chains=8)
    # point 0: its two uncovered maxima of non-negligible mass, heaviest first (the third holds
    # e^-30 of the mass); point 1 needs none, so its chains start at its heaviest maxima
    assert starts[..., 0].T.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert starts_mod.top_up_points(found, torch.zeros(2, 4, dtype=torch.bool), max_chains=8) is None


SIZES = {"num_chains": 2, "num_draws": 600, "num_warmup": 200, "num_importance": 2000}


@pytest.mark.slow
def test_a_needle_beside_a_broad_heavy_mode_gets_its_mass():
    """The broad mode holds 5-40% of the mass and the needle the rest: the divergences lead to
    the needle, a chain is started there without warm-up, and the mode masses and log p(x) are
    those of the grid."""
    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.045], [0.049], [0.053]], dtype=torch.float64)
    grid = reference_posterior(model, x, "grid", num_draws=4000)
    # the needle's cliff makes the importance weights vary: 2,000 draws give log p(x) to 0.05-0.07
    # (reported, and flagged), 8,000 to 0.02-0.03
    ref = reference_posterior(model, x, "nuts", seed=0, **{**SIZES, "num_importance": 8000})
    err, _ = modes.reference_mass_error(ref, grid)
    assert float(err.max()) < 0.05
    assert float((log_px(ref)[0] - log_px(grid)[0]).abs().max()) < 0.05
    assert float(ref.diagnostics.missing_mass.max()) < 0.01


@pytest.mark.slow
def test_many_modes_in_two_dimensions_against_the_grid():
    """The K = 2 case of the validation benchmark, three points: up to a dozen modes, more than
    the chains asked for."""
    model = LatentGaussian(Sines(), 2, 2, 0.1).double()
    x = model.sample(3, seed=0).x.double()
    grid = reference_posterior(model, x, "grid", num_draws=4000)
    # 32 starts leave maxima unfound, whose mass only the prior component's draws then reach:
    # log p(x) is then 0.1 nats uncertain (reported); 128 starts find them
    ref = reference_posterior(
        model, x, "nuts", seed=0, **{**SIZES, "num_importance": 8000, "init_candidates": 128}
    )
    err, labels = modes.reference_mass_error(ref, grid)
    assert int(modes.num_modes(labels).min()) >= 4
    assert float(err.max()) < 0.05
    assert float((log_px(ref)[0] - log_px(grid)[0]).abs().max()) < 0.05


def test_points_sampled_in_batches_each_adapt_their_own_step_size():
    """``point_batch=2`` on five points: three runs, three step sizes, one reference; same
    seed, same draws."""
    import json

    truth = LatentGaussian(Parabola(), 1, 1, 0.05).double()
    x = truth.sample(5, seed=0).x.double()
    options = {"num_chains": 2, "num_draws": 100, "num_warmup": 50, "num_importance": 500, "point_batch": 2}
    ref = reference_posterior(truth, x, "nuts", seed=0, **options)
    sampler = json.loads(ref.posterior.attrs["sampler"])
    assert len(sampler["step_sizes"]) == 3 and ref.posterior.sizes["point"] == 5
    again = reference_posterior(truth, x, "nuts", seed=0, **options)
    assert torch.equal(
        torch.as_tensor(ref.posterior["z"].values), torch.as_tensor(again.posterior["z"].values)
    )
