"""Every registered entry has a test: the smoke lists below must name exactly the registry.

When you register a new model, guide or objective, add it here; the smoke tests then fit it
for a few steps (like Pyro's tests/test_examples.py does for its examples).
"""

import pytest
import torch

import pyrofail as pf
from pyrofail import zoo

SMOKE = {
    "model": [
        "clusters",
        "degenerate_line",
        "degenerate_line_continuous",
        "figure8",
        "linear_gaussian",
        "quadratic",
        "semicircle",
        "two_factor_smooth",
        "two_factor_steps",
    ],
    "guide": ["flow", "full_rank", "mean_field", "mixture"],
    "objective": ["elbo", "iwae", "self_consistent", "spread"],
    "procedure": ["joint", "libi", "posthoc_self_consistency"],
}


@pytest.mark.parametrize("kind", sorted(SMOKE))
def test_every_registered_entry_has_a_smoke_test(kind):
    missing = set(zoo.names(kind)) - set(SMOKE[kind])
    stale = set(SMOKE[kind]) - set(zoo.names(kind))
    assert not missing, f"registered {kind}s without a smoke test: {sorted(missing)}"
    assert not stale, f"smoke tests for unregistered {kind}s: {sorted(stale)}"


@pytest.mark.parametrize("kind", sorted(SMOKE))
def test_entries_carry_metadata(kind):
    for name in zoo.names(kind):
        entry = zoo.entry(kind, name)
        assert entry.summary and entry.doc, f"{kind} {name} needs a summary and a docstring"
        if kind == "model":
            for key in ("latent_dim", "data_dim", "noise_scale", "failure"):
                assert key in entry.meta, f"model {name} lacks metadata {key!r}"
            assert entry.keywords


@pytest.mark.parametrize("name", SMOKE["model"])
def test_model_smoke_fit(name):
    truth = zoo.model(name)
    data = truth.sample(120, seed=0)
    meta = zoo.entry("model", name).meta
    assert (truth.latent_dim, truth.data_dim) == (meta["latent_dim"], meta["data_dim"])
    # a labelled process has no single decoder to start from: fit x alone from random starts
    # (its M2 smoke fit is in tests/test_m2.py)
    init = "random" if meta.get("labels") else "paper"
    fit = pf.fit(
        data.x, truth=truth, restarts=2, steps=5, pretrain_steps=5, hidden=(8,), eval_every=5, init=init
    )
    assert fit.model.restarts is None and fit.guide.restarts is None
    assert torch.isfinite(fit.model.log_joint(torch.zeros(3, truth.latent_dim), data.x[:3])).all()


@pytest.mark.parametrize("guide", SMOKE["guide"])
@pytest.mark.parametrize("objective", SMOKE["objective"])
def test_guide_objective_smoke_fit(guide, objective):
    truth = zoo.model("figure8")
    data = truth.sample(120, seed=0)
    fit = pf.fit(
        data.x,
        truth=truth,
        guide=guide,
        objective=objective,
        restarts=2,
        steps=5,
        pretrain_steps=5,
        hidden=(8,),
        eval_every=5,
        objective_options={"num_particles": 3} if objective == "iwae" else None,
    )
    q = fit.guide.distribution(data.x[:4])
    assert q.batch_shape == (4,) and q.event_shape == (1,)
    assert fit.history["step"] == [5]


@pytest.mark.parametrize("procedure", SMOKE["procedure"])
def test_procedure_smoke_fit(procedure):
    truth = zoo.model("quadratic")
    data = truth.sample(120, seed=0)
    fit = pf.fit(
        data.x,
        truth=truth,
        procedure=procedure,
        restarts=2,
        steps=5,
        pretrain_steps=5,
        hidden=(8,),
        eval_every=5,
    )
    assert fit.model.restarts is None and fit.guide.restarts is None
    assert fit.config["procedure"] == procedure


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(pf.UsageError, match="choose one of: clusters, .*figure8"):
        zoo.model("figure9")
    with pytest.raises(ValueError, match="unknown guide"):
        zoo.guide("nope", latent_dim=1, data_dim=1)
