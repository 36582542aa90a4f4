"""The learned heteroscedastic model: its density by hand, its samples, restart batching."""

import math

import pyro.distributions as dist
import pytest
import torch

import pyrofail as pf
from pyrofail.models import HeteroscedasticDecoder
from pyrofail.nn import take_restart


@pytest.mark.parametrize("prior", ["gaussian", "bernoulli"])
def test_log_joint_by_hand(prior):
    torch.manual_seed(0)
    m = HeteroscedasticDecoder(2, 3, hidden=(5,), prior=prior)
    z = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    x = torch.randn(2, 3)
    out = m.decoder(z)
    mu, log_var = out[:, :3], out[:, 3:]
    lik = dist.Normal(mu, (0.5 * log_var).exp()).log_prob(x).sum(-1)
    log_prior = -2 * math.log(2) if prior == "bernoulli" else dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(m.log_joint(z, x), log_prior + lik, atol=1e-5)
    assert torch.allclose(m.scale(z) ** 2, log_var.exp())


def test_samples_follow_the_decoder():
    torch.manual_seed(0)
    m = HeteroscedasticDecoder(1, 2, hidden=(5,), prior="bernoulli")
    d = m.sample(20000, seed=0)
    for z in (0.0, 1.0):
        rows = d.z[:, 0] == z
        zz = torch.full((1, 1), z)
        mu, sd = m.mean(zz)[0], m.scale(zz)[0]
        n = int(rows.sum())
        assert torch.all((d.x[rows].mean(0) - mu).abs() < 4 * sd / math.sqrt(n))
        assert torch.all((d.x[rows].std(0) - sd).abs() < 4 * sd / math.sqrt(2 * n))


def test_batched_and_fit():
    torch.manual_seed(0)
    m = HeteroscedasticDecoder(1, 2, hidden=(5,), restarts=3)
    z, x = torch.randn(4, 1), torch.randn(4, 2)
    lj = m.log_joint(z, x)
    assert lj.shape == (3, 4)
    assert torch.allclose(take_restart(m, 1).log_joint(z, x), lj[1], atol=1e-6)
    fit = pf.fit(
        torch.randn(60, 2),
        model=HeteroscedasticDecoder(1, 2, hidden=(5,)),
        noise_scale=1.0,
        restarts=2,
        steps=4,
    )
    assert fit.model.restarts is None and torch.isfinite(fit.model.log_joint(z, x)).all()


def test_init_log_variance_offsets_the_start():
    torch.manual_seed(0)
    a = HeteroscedasticDecoder(1, 2, hidden=(5,))
    torch.manual_seed(0)
    b = HeteroscedasticDecoder(1, 2, hidden=(5,), init_log_variance=-3.0)
    z = torch.randn(4, 1)
    assert torch.allclose(b.log_variance(z), a.log_variance(z) - 3.0, atol=1e-6)
    assert torch.equal(b.mean(z), a.mean(z))
