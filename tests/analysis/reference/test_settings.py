"""The NUTS reference's settings: every knob checked where it is set, recorded with the reference."""

import json

import pytest
import torch

from pyrofail import zoo
from pyrofail.analysis.reference import nuts, reference_posterior
from pyrofail.analysis.reference.settings import NutsSettings
from pyrofail.errors import UsageError


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_draws": 0}, "num_draws"),
        ({"num_chains": 1}, "num_chains"),
        ({"num_chains": 4, "max_chains": 3}, "max_chains"),
        ({"num_warmup": -1}, "num_warmup"),
        ({"max_tree_depth": 0}, "max_tree_depth"),
        ({"init_candidates": 0}, "init_candidates"),
        ({"num_importance": 9}, "num_importance"),
        ({"top_up": -1}, "top_up"),
        ({"point_batch": 0}, "point_batch"),
        ({"target_accept_prob": 0.0}, "target_accept_prob"),
        ({"defensive": -0.1}, "defensive"),
        ({"start_share": 1.0}, "start_share"),
        ({"top_up_step": 0.0}, "top_up_step"),
        ({"top_up_step": float("inf")}, "top_up_step"),
        ({"max_divergent_steps": -1}, "max_divergent_steps"),
        ({"dtype": "float16"}, "dtype"),
        ({"precondition": "dense"}, "precondition"),
        ({"init": "random"}, "init"),
        ({"unimodal": "laplace"}, "unimodal"),
        ({"num_draws": "many"}, "num_draws"),
        ({"number_of_draws": 10}, "number_of_draws"),
    ],
)
def test_a_bad_setting_is_a_usage_error_naming_it(options, match):
    with pytest.raises(UsageError, match=match):
        NutsSettings.from_options(**options)


def test_settings_are_frozen_and_recorded_in_full():
    s = NutsSettings(num_draws=300, num_chains=3)
    with pytest.raises(AttributeError):
        s.num_draws = 10
    assert s.per_chain == 100
    record = s.record(extra_candidates=8)
    assert set(record) == set(NutsSettings.names()) | {"extra_candidates"}
    assert record["extra_candidates"] == 8 and record["num_draws"] == 300


def test_the_reference_records_its_settings_and_takes_them_as_an_object():
    truth = zoo.model("quadratic")
    x = truth.sample(3, seed=1).x
    options = {"num_chains": 2, "num_draws": 40, "num_warmup": 20, "num_importance": 100, "unimodal": "nuts"}
    a = reference_posterior(truth, x, "nuts", seed=2, **options)
    b = nuts.nuts_reference(truth, x, seed=2, settings=NutsSettings(**options))
    assert torch.equal(torch.as_tensor(a.posterior.z.values), torch.as_tensor(b.posterior.z.values))
    assert json.loads(a.posterior.attrs["options"]) == NutsSettings(**options).record()
    with pytest.raises(UsageError, match="not both"):
        nuts.nuts_reference(truth, x, settings=NutsSettings(), num_draws=10)
