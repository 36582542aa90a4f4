"""The quality gate against references whose failures are planted and known.

Draws are exact posterior draws from the grid (restricted to a region where a failing sampler
would stay), so that every failure the gate sees is the planted one.
"""

import math

import pytest
import torch
from torch import nn

from pyrofail import zoo
from pyrofail.analysis.reference import quality, reference_posterior, reweight
from pyrofail.analysis.reference.grid import grid_posterior
from pyrofail.analysis.reference.idata import build_inference_data
from pyrofail.errors import UsageError
from pyrofail.models import LatentGaussian


def _chains(model, x, keep, chains, s=200, seed=0):
    """``(C, S, N, 1)``: chain ``c`` holds exact draws restricted to ``keep[c](z)``."""
    out = []
    for c in range(chains):
        post = grid_posterior(model, x, num_draws=20 * s, seed=seed + c)
        ok = keep[c](post.draws[..., 0])
        idx = torch.stack([torch.nonzero(k).flatten()[:s] for k in ok])
        out.append(post.draws.gather(1, idx[..., None]).transpose(0, 1))
    return torch.stack(out)


@pytest.fixture(scope="module")
def quadratic():
    truth = zoo.model("quadratic").double()
    x = truth.sample(30, seed=4).x.double()
    return truth, x[x[:, 0] > 0.05][:5]  # two separated modes of mass 1/2 each


@pytest.mark.slow
def test_draws_in_every_mode_pass(quadratic):
    truth, x = quadratic
    z = _chains(truth, x, [lambda z: z > 0, lambda z: z < 0] * 2, 4)
    q = quality.gate(reweight.from_draws(truth, x, z))
    assert q.ok.all(), q.reasons()
    assert q.summary()["any"] == 0.0 and all(r == "" for r in q.reasons())


@pytest.mark.slow
def test_a_mode_no_chain_visits_fails_on_unrepresented_mass(quadratic):
    truth, x = quadratic
    z = _chains(truth, x, [lambda z: z > 0] * 4, 4)
    ref = reweight.from_draws(truth, x, z)
    q = quality.gate(ref)
    assert not q.ok.any()
    assert bool(q.failed["unrepresented_mass"].all())
    assert q.summary()["unrepresented_mass"] == 1.0
    # the chains agree with one another: the draws' own diagnostics see nothing
    assert not q.failed["rhat_within_modes"].any() and not q.failed["ess"].any()
    assert all(r.startswith("unrepresented_mass 0.") for r in q.reasons())


class Step(nn.Module):
    """A broad mode on z < 1.5 beside a narrow peak where f crosses x (see test_nuts)."""

    def forward(self, z):
        return torch.special.ndtr((z - 1.5) / 4e-4)


def test_mass_outside_every_component_fails_on_missing_mass():
    model = LatentGaussian(Step(), 1, 1, 0.01).double()
    x = torch.tensor([[0.046], [0.048]], dtype=torch.float64)
    z = _chains(model, x, [lambda z: z > 1.49] * 2, 2)
    q = quality.gate(reweight.from_draws(model, x, z, num_importance=2000, maxima=False))
    assert bool(q.failed["missing_mass"].all())


@pytest.mark.slow
def test_rhat_within_modes_is_gated_and_rhat_over_all_chains_is_not(quadratic):
    truth, x = quadratic
    z = _chains(truth, x, [lambda z: z > 0, lambda z: z < 0] * 2, 4)
    z[0] = z[0] + z[0].std(0)  # one chain a posterior standard deviation off the other in its mode
    ref = reweight.from_draws(truth, x, z)
    q = quality.gate(ref)
    assert bool(q.failed["rhat_within_modes"].all())
    # chains in two modes make the all-chain R-hat huge in every case; it is stored, not gated
    assert float(ref.diagnostics.rhat.min()) > 1.5 and "rhat" not in q.failed


def _fake_nuts(**diagnostics):
    n = 3
    base = {
        "rhat": torch.ones(n), "rhat_within_modes": torch.ones(n), "ess": torch.full((n,), 1000.0),
        "pareto_k": torch.zeros(n), "missing_mass": torch.zeros(n), "unrepresented_mass": torch.zeros(n),
        "divergences": torch.zeros(n),
    }  # fmt: skip
    base.update(diagnostics)
    return build_inference_data(
        z=torch.zeros(1, 5, n, 1), log_weight=torch.full((1, 5, n), -math.log(5)), x=torch.zeros(n, 1),
        log_px=torch.zeros(n), log_px_stderr=torch.full((n,), 0.01), mean=torch.zeros(n, 1),
        cov=torch.ones(n, 1, 1), diagnostics=base,
        attrs={"method": "nuts", "options": {"num_importance": 4000}},
    )  # fmt: skip


@pytest.mark.parametrize(
    "name, values, failing",
    [
        ("rhat_within_modes", [1.0, 1.06, math.nan], [False, True, True]),
        ("ess", [401.0, 399.0, math.nan], [False, True, True]),
        ("pareto_k", [0.69, 0.71, math.inf], [False, True, True]),
        ("missing_mass", [0.0, 0.011, 0.009], [False, True, False]),
        ("unrepresented_mass", [0.0, 0.5, 0.0099], [False, True, False]),
        ("divergences", [0.0, 1.0, 0.0], [False, True, False]),
    ],
)
def test_each_threshold(name, values, failing):
    q = quality.gate(_fake_nuts(**{name: torch.tensor(values)}))
    assert q.failed[name].tolist() == failing
    assert q.ok.tolist() == [not f for f in failing]


def test_pareto_k_threshold_follows_the_number_of_importance_draws():
    ref = _fake_nuts(pareto_k=torch.tensor([0.5, 0.6, 0.0]))
    ref.posterior.attrs["options"] = '{"num_importance": 100}'  # 1 - 1/log10(100) = 0.5
    assert quality.gate(ref).failed["pareto_k"].tolist() == [False, True, False]


def test_a_reference_from_before_the_gate_fails_every_point():
    ref = _fake_nuts()
    ref.diagnostics = ref.diagnostics.drop_vars("rhat_within_modes")
    q = quality.gate(ref)
    assert not q.ok.any() and q.reasons()[0] == "rhat_within_modes not recorded"


class Far(nn.Module):  # only z near 14 explains x = 0: beyond the widest box
    def forward(self, z):
        return z - 14.0


def test_grid_boundary_mass_fails():
    model = LatentGaussian(Far(), 1, 1, 0.3)
    x = torch.tensor([[0.0], [-14.0]], dtype=torch.float64)  # z near 12.8 (past the box), z near 0
    q = quality.gate(reference_posterior(model, x, "grid", num_draws=10))
    assert q.failed["boundary_mass"].tolist() == [True, False]


class Kink(nn.Module):
    def forward(self, z):
        return torch.tanh(40 * (z - 1.0))


def test_grid_unresolved_mass_fails():
    model = LatentGaussian(Kink(), 1, 1, 0.05)
    x = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="unresolved"):
        ref = reference_posterior(model, x, "grid", num_draws=10, max_nodes=200)
    q = quality.gate(ref)
    assert q.failed["unresolved_mass"][0] and not q.ok[0]


def test_table_and_unknown_method():
    ok = quality.gate(_fake_nuts())
    bad = quality.gate(_fake_nuts(divergences=torch.tensor([1.0, 0.0, 0.0])))
    text = quality.table({"truth": ok, "job": bad})
    assert "| job | nuts | 3 | 33.3% |" in text and text.count("\n") == 3
    ref = _fake_nuts()
    ref.posterior.attrs["method"] = "vi"
    with pytest.raises(UsageError, match="vi"):
        quality.gate(ref)
