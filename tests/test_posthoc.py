"""The post-hoc self-consistency procedure: the decoder stays fixed, no data are read, and the
encoder becomes more consistent with the decoder."""

import copy

import pytest
import torch

import pyrofail as pf
from pyrofail import zoo
from pyrofail.analysis.downstream.self_consistency import consistency
from pyrofail.estimate import Estimate
from pyrofail.models import LatentGaussian
from pyrofail.nn import MLP


def _decoder_and_encoder():
    torch.manual_seed(0)
    model = LatentGaussian(MLP((2, 16, 3), activation="tanh"), 2, 3, 0.1)
    guide = zoo.guide("mean_field", latent_dim=2, data_dim=3, hidden=(16,))
    return model, guide


def test_posthoc_keeps_the_decoder_and_makes_the_encoder_consistent():
    model, guide = _decoder_and_encoder()
    before_model = copy.deepcopy(model.state_dict())
    before = consistency(model, guide, 500, seed=1)
    # x is only read for its width: NaNs would be refused, so pass zeros
    result = pf.fit(
        torch.zeros(10, 3),
        model=model,
        guide=guide,
        objective="self_consistent",
        procedure="posthoc_self_consistency",
        procedure_options={"samples": 2000, "val_samples": 200},
        restarts=1,
        steps=200,
        lr=3e-3,
        seed=0,
    )
    for name, value in before_model.items():
        assert torch.equal(model.state_dict()[name], value)
        assert torch.equal(result.model.state_dict()[name], value)
    after = consistency(result.model, result.guide, 500, seed=1)
    gain = Estimate.paired(before["per_point"], after["per_point"])
    assert gain.mean > 4 * gain.stderr > 0
    assert result.config["learn_model"] is False and result.config["n_train"] == 2000
    assert result.history["posthoc"] == {"samples": 2000, "val_samples": 200}


def test_posthoc_needs_a_model_and_known_options():
    model, guide = _decoder_and_encoder()
    with pytest.raises(pf.UsageError, match="needs model="):
        pf.fit(
            torch.zeros(10, 3),
            latent_dim=2,
            noise_scale=0.1,
            learn_model=False,
            procedure="posthoc_self_consistency",
        )
    with pytest.raises(pf.UsageError, match="no option 'data'"):
        pf.fit(
            torch.zeros(10, 3),
            model=model,
            procedure="posthoc_self_consistency",
            procedure_options={"data": 1},
        )


def test_without_a_model_the_vae_is_trained_first_then_its_encoder_on_its_samples():
    x = torch.randn(200, 3)
    result = pf.fit(
        x,
        latent_dim=1,
        noise_scale=0.5,
        objective="self_consistent",
        procedure="posthoc_self_consistency",
        procedure_options={"samples": 300, "val_samples": 50},
        restarts=2,
        steps=20,
        hidden=(8,),
        eval_every=10,
        seed=0,
    )
    stage1 = result.history["pretrained"]
    assert stage1["history"]["step"][-1] == 20 and len(stage1["restarts"]) == 2
    # the second stage trained on the model's draws, not on x
    assert result.config["n_train"] == 300 and result.config["learn_model"] is False
    assert result.config["objective"] == "self_consistent"
