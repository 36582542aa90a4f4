"""Signal and noise (the downstream stage): the learned σ per restart, its spread, the report's
verdict against the truth's σ."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyrofail import fit, zoo
from pyrofail.estimate import Estimate
from pyrofail.records.downstream import LearnedNoise
from pyrofail.report.downstream import _noise_lines
from pyrofail.stages.downstream import learned_noise


def test_a_fit_that_learns_noise_records_each_restarts_sigma():
    truth = zoo.model("figure8")
    x = truth.sample(200, seed=0).x
    result = fit(x, latent_dim=1, restarts=3, steps=20, learn_noise=True, noise_scale=0.5, hidden=(8,),
                 pretrain_steps=0, seed=0)  # fmt: skip
    sigmas = [r["noise_scale"] for r in result.restarts]
    assert sigmas == pytest.approx(result.batched_model.noise_scale.tolist())
    assert sigmas[result.best] == pytest.approx(float(result.model.noise_scale))
    assert all(s != pytest.approx(0.5, abs=1e-6) for s in sigmas)  # learned, not the start


def test_a_fixed_sigma_is_not_recorded_as_learned():
    x = zoo.model("figure8").sample(100, seed=0).x
    result = fit(x, latent_dim=1, restarts=2, steps=5, noise_scale=0.5, hidden=(8,), pretrain_steps=0)
    assert all("noise_scale" not in r for r in result.restarts)


def test_learned_noise_summarises_the_finished_restarts_against_the_truth():
    model = SimpleNamespace(noise_scale=torch.tensor([0.04, 0.06]))  # per feature: mean 0.05
    truth = SimpleNamespace(noise_scale=torch.tensor(0.1))
    restarts = [
        {"noise_scale": [0.05, 0.05], "validation_objective": -1.0},
        {"noise_scale": 0.07, "validation_objective": -1.2},
        {"noise_scale": 0.09, "validation_objective": -0.9},
        {"noise_scale": 5.0, "validation_objective": None},  # diverged: left out
    ]
    rec = learned_noise(model, truth, restarts)
    values = np.array([0.05, 0.07, 0.09])
    assert rec.selected == pytest.approx(0.05)
    assert rec.truth == pytest.approx(0.1)
    assert rec.ratio == pytest.approx(0.5)
    assert rec.restart_values == pytest.approx(values.tolist())
    assert rec.over_restarts.mean == pytest.approx(values.mean())
    assert rec.over_restarts.stderr == pytest.approx(values.std(ddof=1) / np.sqrt(3))


def _record(mean, stderr):
    return LearnedNoise(mean, [mean] * 4, Estimate(mean, stderr, 4), 0.1, mean / 0.1)


def test_the_report_calls_a_sigma_below_the_truth_noise_learned_as_signal_and_a_close_one_a_tie():
    lines = _noise_lines("p", {"a-elbo": _record(0.05, 0.005), "b-iwae": _record(0.095, 0.005)})
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "-" in line[:4]}
    assert "below: noise learned as signal" in rows["a-elbo"]
    assert "| tie |" in rows["b-iwae"]
    assert "figures/noise-p.png" in lines[-2]
    assert _noise_lines("p", {}) == []
