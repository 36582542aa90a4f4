"""The cheap path of the NUTS reference (``unimodal="importance"``) against exact answers.

Points whose maxima search finds one maximum are importance-sampled from its Laplace
approximation and need no chain when the weights pass their checks
(:mod:`pyrofail.analysis.reference.unimodal`). Exact answers: the closed form of a linear-Gaussian
model (K = 3), and a factorised K = 3 decoder whose posterior is a product of 1-D grids
(``benchmarks/exact.py``), with some points unimodal and some not, so that the two paths' points
are joined in one reference. Tolerances: the reference's targets (log p(x) within 0.02 nats,
mode masses within 0.05), and moments within a fifth of a posterior standard deviation.
"""

import json

import pytest
import torch
from torch import nn

from benchmarks.exact import Cubic, Step, exact_reference, factorised_model
from pyrofail.analysis.reference import log_px, modes, quality, reference_posterior, unimodal
from pyrofail.analysis.reference.grid import grid_posterior
from pyrofail.analysis.reference.maxima import find_maxima
from pyrofail.models import LatentGaussian, LinearGaussian

SMALL = {"num_chains": 2, "num_draws": 400, "num_warmup": 150, "num_importance": 2000}
# importance draws are cheap: 16,000 put log p(x)'s standard error near 0.005 nats, a quarter of
# the 0.02 tolerance (2,000 leave it at 0.015, and one point in six fails 0.02 by chance); 2,000
# stored draws (effective sample size about 1,300) put a covariance entry's noise near 0.04 of
# sd_i sd_j, a fifth of its 0.2 tolerance
QUICK = {**SMALL, "num_draws": 2000, "num_importance": 16000}


def _sampler(ref) -> dict:
    return json.loads(ref.posterior.attrs["sampler"])


def test_a_gaussian_posterior_needs_no_chain_and_matches_the_closed_form():
    truth = LinearGaussian(latent_dim=3, data_dim=4, noise_scale=0.3, seed=2).double()
    x = truth.sample(12, seed=0).x.double()
    ref = reference_posterior(truth, x, "nuts", seed=0, unimodal="importance", **QUICK)
    stats = _sampler(ref)
    assert stats["importance_points"] == 12 and stats["num_grads"] == 0
    value, stderr = log_px(ref)
    err = (value - truth.marginal().log_prob(x)).abs()
    assert float(err.max()) <= 0.02 and bool((err <= 4 * stderr + 1e-3).all())
    exact = truth.posterior(x)
    sd = exact.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    mean = torch.as_tensor(ref.moments["mean"].values)
    assert float(((mean - exact.mean).abs() / sd).max()) < 0.2
    cov = torch.as_tensor(ref.moments["cov"].values)
    assert float(((cov - exact.covariance_matrix).abs() / (sd[:, :, None] * sd[:, None, :])).max()) < 0.2
    assert bool(quality.gate(ref, ess_min=100).ok.all())


class Line(nn.Module):
    def forward(self, z):
        return z


@pytest.mark.slow
def test_unimodal_and_multimodal_points_joined_in_one_reference_match_the_exact_one():
    """Cubic's coordinate is unimodal for |x| > 2 and has three modes for |x| < 2: the first
    half of the points take the cheap path, the rest NUTS, and every point is right."""
    parts = [Cubic(), Line(), Line()]
    model = factorised_model(parts, 0.2)
    gen = torch.Generator().manual_seed(0)
    cubic = torch.tensor([3.0, -3.5, 4.0, 0.3, -0.5, 1.0], dtype=torch.float64)
    x = torch.cat([cubic[:, None], 0.7 * torch.randn(6, 2, generator=gen, dtype=torch.float64)], -1)
    exact = exact_reference(parts, 0.2, x, seed=0)
    ref = reference_posterior(
        model, x, "nuts", seed=0, unimodal="importance", **{**SMALL, "num_importance": 16000}
    )
    assert _sampler(ref)["importance_points"] == 3
    mass_err, labels = modes.reference_mass_error(ref, exact)
    assert modes.num_modes(labels).tolist() == [1, 1, 1, 3, 3, 3]
    assert float(mass_err.max()) <= 0.05
    assert float((log_px(ref)[0] - log_px(exact)[0]).abs().max()) <= 0.02
    mean, sd = torch.as_tensor(ref.moments["mean"].values), torch.as_tensor(exact.moments["cov"].values)
    sd = sd.diagonal(dim1=-2, dim2=-1).sqrt()
    assert float(((mean - torch.as_tensor(exact.moments["mean"].values)).abs() / sd)[:3].max()) < 0.2
    total = torch.as_tensor(ref.diagnostics.mode_mass.values).sum(-1) + torch.as_tensor(
        ref.diagnostics.missing_mass.values
    )
    assert torch.allclose(total, torch.ones(6, dtype=torch.float64))
    assert not bool(ref.sample_stats.diverging.values[..., :3].any())


def test_a_cliff_beside_the_only_maximum_found_sends_the_point_to_nuts():
    """The broad mode of the step decoder ends at a cliff where a needle of width ~4e-5 holds
    most of the mass. A search that found the broad mode alone calls the point unimodal, and
    importance sampling from its Laplace approximation never lands in the needle: its weights
    look fine. The cliff check alone refuses it."""
    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.05]], dtype=torch.float64)
    found = find_maxima(model, x, candidates=0, extra=torch.zeros(1, 1, 1, dtype=torch.float64))
    assert found.valid.sum().item() == 1 and bool(unimodal.candidates(found, 0.005).all())
    needle = grid_posterior(model, x, regions=[lambda z: z[:, 0] > 1.49]).region_mass[0, 0]
    assert float(needle) > 0.1  # the point is not unimodal: a reference that drops it is wrong
    rows = torch.tensor([0])
    for seed in range(3):
        options = {"num_importance": 1000, "defensive": 0.1, "seed": seed}
        assert unimodal.try_points(model, x, found, rows, **options) is None
        _, failed = unimodal.assess(model, x, found, rows, **options)
        # the cliff is seen whether or not a draw happened to land near the needle
        assert bool(failed["cliff"].all())


def test_a_curved_posterior_is_sent_to_nuts():
    """f(z) = z_2 + 2 z_1^2 at x = 0: one maximum, at the origin, but the posterior follows the
    parabola z_2 = -2 z_1^2 over the prior's width in z_1, far from its Laplace approximation
    (width sigma in z_2): importance sampling from it fails its checks."""

    class Banana(nn.Module):
        def forward(self, z):
            return z[..., 1:] + 2 * z[..., :1] ** 2

    model = LatentGaussian(Banana(), 2, 1, 0.05).double()
    x = torch.zeros(1, 1, dtype=torch.float64)
    found = find_maxima(model, x, candidates=8, seed=0)
    assert bool(unimodal.candidates(found, 0.005).all())
    rows = torch.tensor([0])
    assert unimodal.try_points(model, x, found, rows, num_importance=4000, defensive=0.1, seed=0) is None
