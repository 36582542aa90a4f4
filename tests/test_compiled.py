"""The direct training step against Pyro's SVI: the same loss, the same gradients, the same fit."""

import contextlib

import pyro
import pytest
import torch
from pyro import poutine

import pyrofail as pf
from pyrofail.errors import UsageError
from pyrofail.training import build, compiled


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks: one thread is faster, and the two fits of a pair see the same rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _grads(modules):
    return [p.grad.clone() for m in modules for p in m.parameters() if p.requires_grad]


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("objective, particles", [("elbo", 1), ("elbo", 3), ("iwae", 1), ("iwae", 5)])
def test_the_direct_loss_and_gradients_are_svis(objective, particles, likelihood):
    with default_dtype(torch.float64):
        r, k, d = 3, 2, 3
        noise = (
            {"noise_scale": 0.3, "learn_noise": True} if likelihood == "gaussian" else {"noise_scale": None}
        )
        model = build.learned_model(k, d, hidden=(8, 8), likelihood=likelihood, restarts=r, **noise)
        guide = build.guide("mean_field", k, d, hidden=(8, 8), restarts=r)
        loss = build.objective(objective, {"num_particles": particles})
        assert compiled.supports(model, guide, loss)
        x = torch.randn(20, d)
        if likelihood == "bernoulli":
            x = (x > 0).double()
        active = torch.tensor([True, False, True])  # a frozen restart contributes nothing
        mask = active.unsqueeze(-1)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):
            expected = loss.loss_and_grads(
                poutine.mask(model.model, mask=mask), poutine.mask(guide, mask=mask), x
            )
        expected_grads = _grads([model, guide])
        for p in [*model.parameters(), *guide.parameters()]:
            p.grad = None
        torch.manual_seed(1)  # the same noise, drawn in the shape and order Pyro draws it
        shape = (r, 20, k) if particles == 1 else (particles, r, 20, k)
        value = compiled.direct_loss(model, guide, x, torch.randn(shape), active, iwae=objective == "iwae")
        value.backward()
        assert value.item() == pytest.approx(expected, rel=1e-12)
        grads = _grads([model, guide])
        assert len(grads) == len(expected_grads)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        # the frozen restart gets no gradient
        assert all(float(g[1].abs().max()) == 0.0 for g in grads)


def _fit(objective, compile, **kw):
    truth = pf.zoo.model("figure8")
    data = truth.sample(400, seed=0)
    return pf.fit(
        data.x[:300],
        x_val=data.x[300:],
        truth=truth,
        restarts=3,
        steps=120,
        pretrain_steps=20,
        hidden=(16, 16),
        objective=objective,
        objective_options={"num_particles": 4} if objective == "iwae" else {},
        seed=5,
        compile=compile,
        **kw,
    )


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_a_direct_fit_is_the_eager_fit(objective):
    # in float64 the two differ only by rounding, which Adam's normalised steps amplify
    # slowly: agreement to 1e-6 after 120 steps
    with default_dtype(torch.float64):
        eager, direct = _fit(objective, False), _fit(objective, True)
    assert direct.best == eager.best
    got = torch.tensor(direct.history["validation"])
    torch.testing.assert_close(got, torch.tensor(eager.history["validation"]), rtol=0, atol=1e-6)
    # in float32 (the default) the same restart wins and validation agrees to 0.01 nats
    eager, direct = _fit(objective, False), _fit(objective, None)  # None: direct where supported
    assert direct.best == eager.best
    got = torch.tensor(direct.history["validation"])
    torch.testing.assert_close(got, torch.tensor(eager.history["validation"]), rtol=0, atol=1e-2)


def test_compile_true_where_the_direct_step_does_not_apply_is_a_usage_error():
    with pytest.raises(UsageError, match="compile=True needs a mean_field guide"):
        _fit("elbo", True, guide="full_rank")
    r = build.guide("mixture", 1, 2, hidden=(8,), restarts=2)
    m = build.learned_model(1, 2, 0.1, hidden=(8,), restarts=2)
    assert not compiled.supports(m, r, build.objective("elbo"))


def test_a_semi_supervised_fit_steps_through_svi():
    # labels select the M2 model, which the direct step does not cover: compile=None takes SVI's
    # step, compile=True says why it cannot
    truth = pf.zoo.model("semicircle")
    data = truth.sample(60, seed=0)
    kw = dict(
        y=data.y, x_val=data.x[:20], truth=truth, restarts=2, steps=4, pretrain_steps=0, hidden=(8,), seed=0
    )
    assert pf.fit(data.x, compile=None, **kw).best in (0, 1)
    with pytest.raises(UsageError, match="unlabelled"):
        pf.fit(data.x, compile=True, **kw)
