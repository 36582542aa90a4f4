"""pyrofail.fit: restarts, initialisation, selection, divergence, resumption, seeding."""

import pytest
import torch

import pyrofail as pf
from pyrofail import zoo
from pyrofail.errors import AllRestartsDiverged, UsageError
from pyrofail.models import LatentGaussian
from pyrofail.nn import MLP

SMALL = dict(
    restarts=3, steps=40, pretrain_steps=200, warmup_steps=10, hidden=(16, 16), eval_every=10, batch_size=50
)


@pytest.fixture(scope="module")
def figure8_data():
    return zoo.model("figure8").sample(400, seed=0)


def test_fit_returns_unbatched_objects_and_records(figure8_data):
    truth = zoo.model("figure8")
    fit = pf.fit(figure8_data.x, truth=truth, seed=1, **SMALL)
    assert fit.model.restarts is None and fit.guide.restarts is None
    assert [r["init"] for r in fit.restarts] == ["ground_truth", "random", "random"]
    assert fit.history["step"] == [10, 20, 30, 40]
    assert len(fit.history["validation"][-1]) == 3
    final = fit.history["validation"][-1]
    assert fit.best == max(range(3), key=lambda r: final[r])
    assert fit.restarts[fit.best]["selected"]
    assert float(fit.model.noise_scale) == pytest.approx(0.06, rel=1e-6)
    m, g = fit.restart(fit.best)
    assert torch.equal(m.decoder.weights[0], fit.model.decoder.weights[0])


def test_ground_truth_initialisation_regresses_the_decoder_onto_f(figure8_data):
    truth = zoo.model("figure8")
    fit = pf.fit(
        figure8_data.x,
        truth=truth,
        restarts=2,
        steps=1,
        init="paper",
        pretrain_steps=1500,
        warmup_steps=0,
        hidden=(32, 32),
        eval_every=1,
    )
    z = torch.linspace(-2, 2, 200)[:, None]
    gt_model, _ = fit.restart(0)
    random_model, _ = fit.restart(1)
    err_gt = (gt_model.mean(z) - truth.mean(z)).pow(2).sum(-1).mean()
    err_random = (random_model.mean(z) - truth.mean(z)).pow(2).sum(-1).mean()
    assert err_gt < 0.01 < err_random


def test_guide_only_fit_keeps_the_decoder_fixed(figure8_data):
    truth = zoo.model("figure8")
    learned = pf.fit(figure8_data.x, truth=truth, seed=0, **SMALL).model
    before = [p.clone() for p in learned.parameters()]
    fit = pf.fit(figure8_data.x, model=learned, learn_model=False, seed=0, **SMALL)
    for a, b in zip(before, fit.model.parameters()):
        assert torch.equal(a, b)
    assert all(r["init"] == "fixed_model" for r in fit.restarts)
    # with the analytic ground truth as the fixed model
    fit = pf.fit(figure8_data.x, model=truth, learn_model=False, **SMALL)
    assert type(fit.model.decoder).__name__ == "Figure8Curve"


def test_same_seed_same_numbers_other_seed_other_numbers(figure8_data):
    truth = zoo.model("figure8")
    a = pf.fit(figure8_data.x, truth=truth, seed=3, **SMALL)
    b = pf.fit(figure8_data.x, truth=truth, seed=3, **SMALL)
    c = pf.fit(figure8_data.x, truth=truth, seed=4, **SMALL)
    assert a.history == b.history
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert a.history["validation"] != c.history["validation"]


def _poison(restart, at_step):
    def callback(step, state):
        if step == at_step:
            with torch.no_grad():
                state["model"].decoder.weights[0][restart] = float("nan")

    return callback


def test_a_nan_restart_is_frozen_marked_and_not_selected(figure8_data):
    truth = zoo.model("figure8")
    fit = pf.fit(figure8_data.x, truth=truth, seed=0, callbacks=[_poison(0, 12)], **SMALL)
    rec = fit.restarts[0]
    assert rec["diverged_at"] == 13 and rec["validation_objective"] is None
    assert fit.best != 0 and not rec["selected"]
    assert all(r["diverged_at"] is None for r in fit.restarts[1:])
    assert all(v is not None for v in fit.history["validation"][-1][1:])
    for p in fit.batched_model.parameters():
        assert torch.isfinite(p[0]).all()  # frozen at its last finite values


def test_all_restarts_diverging_is_a_clear_error(figure8_data, tmp_path):
    truth = zoo.model("figure8")
    poison = [_poison(r, 5) for r in range(3)]
    with pytest.raises(AllRestartsDiverged, match="every restart diverged"):
        pf.fit(figure8_data.x, truth=truth, callbacks=poison, checkpoint=tmp_path / "c.pt", **SMALL)
    assert (tmp_path / "c.pt").exists()  # what was computed is kept


class _Stop(Exception):
    pass


def test_resumed_fit_equals_uninterrupted_fit(figure8_data, tmp_path):
    truth = zoo.model("figure8")
    full = pf.fit(figure8_data.x, truth=truth, seed=5, **SMALL)

    def stop(step, state):
        if step == 27:
            raise _Stop

    ckpt = tmp_path / "fit.ckpt"
    with pytest.raises(_Stop):
        pf.fit(figure8_data.x, truth=truth, seed=5, checkpoint=ckpt, callbacks=[stop], **SMALL)
    assert ckpt.exists()
    resumed = pf.fit(figure8_data.x, truth=truth, seed=5, checkpoint=ckpt, **SMALL)
    assert resumed.history == full.history
    for p, q in zip(full.batched_model.parameters(), resumed.batched_model.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(UsageError, match="other options"):
        pf.fit(figure8_data.x, truth=truth, seed=6, checkpoint=ckpt, **SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(restarts=0), "restarts=0"),
        (dict(steps=-1), "steps=-1"),
        (dict(lr=0.0), "lr=0.0"),
        (dict(lr=float("nan")), "lr=nan"),
        (dict(noise_scale=-1.0), "noise_scale=-1.0"),
        (dict(latent_dim=0), "latent_dim=0"),
        (dict(guide="nope"), "unknown guide 'nope'"),
        (dict(objective="kl"), "unknown objective 'kl'"),
        (dict(init="best"), "unknown init 'best'"),
        (dict(device="tpu"), "device 'tpu'"),
        (dict(learn_model=False), "learn_model=False needs model="),
        (dict(x_val=torch.zeros(5, 3)), "x_val has 3 columns"),
    ],
)
def test_bad_options_raise_usage_errors(kwargs, message, figure8_data):
    truth = zoo.model("figure8")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pf.fit(figure8_data.x, truth=truth, **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(10, 3), "x has 3 columns but the process has data_dim=2"),
        (torch.zeros(10), r"x has shape \(10,\)"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), r"NaN or infinite values \(rows \[1\]\)"),
        ("data.csv", "x must be a numeric array"),
    ],
)
def test_bad_data_raise_usage_errors(x, message):
    with pytest.raises(UsageError, match=message):
        pf.fit(x, truth=zoo.model("figure8"), **SMALL)


def test_custom_process_without_registration():
    """A user's own LatentGaussian goes through fit like a zoo entry."""

    class Spiral(torch.nn.Module):
        def forward(self, z):
            t = 2.0 * z[..., 0]
            return torch.stack((t.cos() * (1 + 0.2 * t), t.sin() * (1 + 0.2 * t)), -1)

    truth = LatentGaussian(Spiral(), latent_dim=1, data_dim=2, noise_scale=0.1)
    data = truth.sample(300, seed=0)
    fit = pf.fit(data.x, truth=truth, **SMALL)
    assert fit.model.latent_dim == 1
    learned = LatentGaussian(MLP((1, 8, 2)), 1, 2, 0.1)
    fit = pf.fit(data.x, model=learned, learn_model=True, **SMALL)
    assert all(r["init"] == "given" for r in fit.restarts)


def test_libi_refuses_labels():
    truth = zoo.model("semicircle")
    data = truth.sample(60, seed=0)
    with pytest.raises(UsageError, match="procedure='libi' takes no labels"):
        pf.fit(data.x, y=data.y, truth=truth, procedure="libi", restarts=1, steps=2)
