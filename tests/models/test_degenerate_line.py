"""The degenerate-line processes: their samples, log_joint and exact posterior by hand."""

import math

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyrofail import zoo
from pyrofail.models.degenerate_line import Bits, DegenerateNormal


def test_bernoulli_line_samples():
    truth = zoo.model("degenerate_line")
    d = truth.sample(20000, seed=0)
    assert torch.all(d.x[:, 1] == 0)
    z = d.z[:, 0]
    assert set(z.unique().tolist()) == {0.0, 1.0}
    p = float(z.mean())
    assert abs(p - 0.5) < 4 * math.sqrt(0.25 / len(z))
    resid = d.x[:, 0] - (2 * z - 1)  # a ~ N(2z - 1, 0.1^2)
    n = len(resid)
    assert abs(float(resid.mean())) < 4 * 0.1 / math.sqrt(n)
    assert abs(float(resid.std()) - 0.1) < 4 * 0.1 / math.sqrt(2 * n)
    assert truth.sample(5, seed=3).x.equal(truth.sample(5, seed=3).x)


def test_bernoulli_line_log_joint_marginal_and_posterior():
    truth = zoo.model("degenerate_line")
    x = torch.tensor([[0.9, 0.0], [-0.05, 0.0], [0.3, 1e-4]])
    for z in (0.0, 1.0):
        expected = math.log(0.5) + dist.Normal(2 * z - 1, 0.1).log_prob(x[:2, 0])
        got = truth.log_joint(torch.full((2, 1), z), x[:2])
        assert torch.allclose(got, expected, atol=1e-5)
    assert truth.log_joint(torch.ones(1, 1), x[2:]).item() == -math.inf  # off the line
    # p(z = 1 | x) = sigmoid(log N(x; 1, s^2) - log N(x; -1, s^2)) = sigmoid(2 x / s^2)
    assert torch.allclose(truth.posterior_probability(x[:2]), torch.sigmoid(2 * x[:2, 0] / 0.01), atol=1e-6)
    marginal = torch.logsumexp(
        torch.stack([truth.log_joint(torch.full((2, 1), z), x[:2]) for z in (0.0, 1.0)]), 0
    )
    assert torch.allclose(truth.log_marginal(x[:2]), marginal)


def test_pyro_model_enumerates_z():
    """TraceEnum_ELBO with no guide sums the Bits site out: its loss is -sum log p(x)."""
    truth = zoo.model("degenerate_line")
    x = truth.sample(30, seed=1).x
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(truth.model, lambda x: None, x)
    assert loss == pytest.approx(-float(truth.log_marginal(x).sum()), rel=1e-5)


def test_continuous_line():
    truth = zoo.model("degenerate_line_continuous")
    d = truth.sample(20000, seed=0)
    assert torch.all(d.x[:, 1] == 0)
    resid = d.x[:, 0] - (2 * torch.special.ndtr(d.z[:, 0]) - 1)
    assert abs(float(resid.std()) - 0.1) < 4 * 0.1 / math.sqrt(2 * len(resid))
    z, x = d.z[:5], d.x[:5]
    expected = dist.Normal(0.0, 1.0).log_prob(z[:, 0]) + dist.Normal(
        2 * torch.special.ndtr(z[:, 0]) - 1, 0.1
    ).log_prob(x[:, 0])
    assert torch.allclose(truth.log_joint(z, x), expected, atol=1e-5)
    assert truth.noise_scale.tolist() == [pytest.approx(0.1), 0.0]
    # the Gaussian-latent reading of the Bernoulli process: [z > 0] ~ Bernoulli(1/2)
    step = zoo.model("degenerate_line").mean(torch.tensor([[-0.3], [0.0], [0.2], [1.0]]))
    assert step[:, 0].tolist() == [-1.0, -1.0, 1.0, 1.0]


def test_bits_and_degenerate_normal():
    b = Bits(torch.tensor([[0.3, -1.0]]))
    states = b.enumerate_support()
    assert states.shape == (4, 1, 2)
    probs = b.log_prob(states).exp()
    assert float(probs.sum()) == pytest.approx(1.0)
    ref = dist.Bernoulli(logits=torch.tensor([0.3, -1.0])).to_event(1)
    assert torch.allclose(b.log_prob(states), ref.log_prob(states))
    assert float(b.entropy()) == pytest.approx(float(-(probs * probs.log()).sum()), rel=1e-6)
    p = DegenerateNormal(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.0]))
    assert float(p.log_prob(torch.tensor([1.5, 2.0]))) == pytest.approx(
        float(dist.Normal(1.0, 0.5).log_prob(torch.tensor(1.5)))
    )
    assert float(p.log_prob(torch.tensor([1.5, 2.1]))) == -math.inf
    assert p.rsample((3,))[:, 1].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("name", ["degenerate_line", "degenerate_line_continuous"])
def test_log_joint_equals_the_pyro_trace(name):
    truth = zoo.model(name)
    data = truth.sample(20, seed=1)
    trace = poutine.trace(poutine.condition(truth.model, data={"z": data.z})).get_trace(data.x)
    expected = float(trace.log_prob_sum())
    assert float(truth.log_joint(data.z, data.x).sum()) == pytest.approx(expected, rel=1e-5)
