"""The guide contract for every registered family: shapes, restarts, and that ``log_prob``
is the density of the family's own samples.

Each family is built with random (not initial) weights, so that the distributions under test
are correlated, skewed or multimodal rather than the families' simple starting points.
"""

import pytest
import torch

from pyrofail import zoo
from pyrofail.errors import UsageError
from pyrofail.nn import stack_restarts, take_restart

# every registered guide, and the flow's other layer kinds and bases
VARIANTS = [(name, {}) for name in zoo.names("guide")] + [
    ("flow", {"base": "gaussian"}),
    ("flow", {"components": 3}),
    ("flow", {"transform": "affine"}),
    ("flow", {"transform": "iaf"}),
    ("flow", {"order": "quadratic", "layers": 3}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in VARIANTS]


def _guide(name, opts, k, d=2, restarts=None, seed=0, jitter=0.3):
    torch.manual_seed(seed)
    g = zoo.guide(name, latent_dim=k, data_dim=d, restarts=restarts, hidden=(8, 8), **opts)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(jitter * torch.randn_like(p))
    return g


def test_every_family_is_listed_here():
    assert {name for name, _ in VARIANTS} == set(zoo.names("guide"))


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shapes_with_restarts_and_particles(name, opts, k):
    g = _guide(name, opts, k, restarts=3)
    x = torch.randn(5, 2)
    q = g.distribution(x)
    assert q.batch_shape == (3, 5) and q.event_shape == (k,)
    z = q.rsample((4,))  # the particle dimension Pyro's vectorised objectives put at dim -3
    assert z.shape == (4, 3, 5, k)
    assert q.log_prob(z).shape == (4, 3, 5)
    one = take_restart(g, 1).distribution(x)
    assert one.batch_shape == (5,) and one.log_prob(z[:, 1]).shape == (4, 5)


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_each_restart_is_an_independent_guide(name, opts, k):
    torch.set_default_dtype(torch.float64)  # so that only the family, not rounding, is compared
    try:
        g = _guide(name, opts, k, restarts=3)
        x = torch.randn(6, 2)
        q = g.distribution(x)
        z = q.sample((7,))
        batched = q.log_prob(z)
        parts = [take_restart(g, r) for r in range(3)]
        for r, part in enumerate(parts):
            assert part.restarts is None
            single = part.distribution(x).log_prob(z[:, r].clone())
            assert torch.allclose(batched[:, r], single, atol=1e-8)
        assert not torch.allclose(batched[:, 0], batched[:, 1])
        again = stack_restarts(parts)
        for a, b in zip(g.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_prob_of_a_fresh_tensor_equals_the_cached_one(name, opts, k):
    """Scoring a point the guide did not just draw goes through the inverse of a flow."""
    torch.set_default_dtype(torch.float64)
    try:
        g = _guide(name, opts, k)
        x = torch.randn(5, 2)
        q = g.distribution(x)
        z = q.rsample((3,))
        cached = q.log_prob(z)
        fresh = g.distribution(x).log_prob(z.detach().clone())
        assert torch.allclose(cached, fresh, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def _grid(k, lo, hi, n):
    axes = [torch.linspace(lo, hi, n, dtype=torch.float64)] * k
    pts = torch.cartesian_prod(*axes).reshape(-1, k)
    return pts, ((hi - lo) / (n - 1)) ** k


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("k", [1, 2])
@torch.no_grad()
def test_log_prob_is_the_density_of_the_samples(name, opts, k):
    """exp(log_prob) integrates to one on a grid, and the mass it gives each cell of a coarse
    partition matches the fraction of 40,000 samples in the cell (a multinomial sampling error
    below 0.0025 per cell: the tolerance 0.012 is about five of them)."""
    torch.set_default_dtype(torch.float64)
    try:
        g = _guide(name, opts, k, d=1)
        x = torch.tensor([[0.7]])
        q = g.distribution(x)
        draws = q.sample((40_000,))[:, 0]
        spread = draws.std(0)
        lo, hi = float((draws.amin(0) - spread).min()), float((draws.amax(0) + spread).max())
        pts, cell = _grid(k, lo, hi, 20_001 if k == 1 else 701)
        dens = q.log_prob(pts[:, None, :]).exp()[:, 0]
        assert float(dens.sum() * cell) == pytest.approx(1.0, abs=5e-3)
        # a coarse partition by the sample quartiles of each coordinate
        edges = [torch.quantile(draws[:, i], torch.tensor([0.25, 0.5, 0.75])) for i in range(k)]

        def cells(z):
            idx = torch.zeros(z.shape[0], dtype=torch.long)
            for i in range(k):
                idx = idx * 4 + torch.bucketize(z[:, i].contiguous(), edges[i])
            return idx

        sampled = torch.bincount(cells(draws), minlength=4**k) / draws.shape[0]
        integrated = torch.zeros(4**k).index_add_(0, cells(pts), dens * cell)
        assert torch.allclose(sampled, integrated, atol=0.012)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"transform": "maf"}, "flow transform 'maf'; choose one of: spline, affine, iaf"),
        ({"layers": 0}, "layers=0"),
        ({"count_bins": 1}, "count_bins=1"),
        ({"bound": -1.0}, "bound=-1.0"),
        ({"order": "cubic"}, "spline order 'cubic'"),
        ({"base": "uniform"}, "flow base 'uniform'; choose one of: bimodal, gaussian"),
        ({"hypernet_hidden": 8}, "hypernet_hidden=8"),
    ],
)
def test_bad_flow_options_name_the_value(options, match):
    with pytest.raises(UsageError, match=match):
        zoo.guide("flow", latent_dim=1, data_dim=1, **options)
