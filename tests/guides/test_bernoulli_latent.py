"""The Bernoulli-latent guide: its probabilities are the encoder's sigmoid, batched or not."""

import torch

from pyrofail.guides import BernoulliLatentGuide
from pyrofail.nn import take_restart
from pyrofail.objectives.spread import enumerate_latent


def test_distribution_and_enumeration():
    torch.manual_seed(0)
    guide = BernoulliLatentGuide(2, 3, hidden=(4,), restarts=2)
    x = torch.randn(5, 3)
    q = guide.distribution(x)
    assert q.batch_shape == (2, 5) and q.event_shape == (2,)
    states = enumerate_latent(q)
    assert states.shape == (4, 2, 5, 2)
    expected = torch.sigmoid(take_restart(guide, 1).encoder(x))
    assert torch.allclose(q.base_dist.probs[1], expected, atol=1e-6)
    assert torch.allclose(q.log_prob(states).exp().sum(0), torch.ones(2, 5), atol=1e-6)
