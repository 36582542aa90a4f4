r"""A guide for binary latents: independent Bernoulli bits from an MLP encoder.

.. math::

    q_\phi(z \mid x) = \prod_{k=1}^K \operatorname{Bernoulli}\big(z_k;\ \sigma(\ell_{\phi,k}(x))\big),
    \qquad z \in \{0, 1\}^K, \quad \sigma = \operatorname{sigmoid},

the encoder of the blog VAE that fails on the degenerate line
(:mod:`pyrofail.models.degenerate_line`; Zhang et al., "Spread divergence", ICML 2020). It is
for models with a binary latent (the Bernoulli-prior
:class:`~pyrofail.models.heteroscedastic_decoder.HeteroscedasticDecoder` model, the
``degenerate_line`` truth);
it is not registered with the variational families, which are for a Gaussian latent. The
``spread`` objective sums over its :math:`2^K` states exactly; Pyro's ``Trace_ELBO`` (the ``elbo``
objective) trains it with the score-function estimator instead.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

from pyrofail.guides.base import AmortizedGuide
from pyrofail.nn import ACTIVATION, MLP

__all__ = ["BernoulliLatentGuide"]


class BernoulliLatentGuide(AmortizedGuide):
    r"""Independent Bernoulli bits with logits :math:`\ell_\phi(x)` (module docstring).

    :param hidden: hidden widths of the encoder MLP (``data_dim`` to ``latent_dim`` logits).

    Example:
        >>> import torch
        >>> q = BernoulliLatentGuide(1, 2, hidden=(8,)).distribution(torch.zeros(3, 2))
        >>> q.batch_shape, q.event_shape, bool(((q.sample() == 0) | (q.sample() == 1)).all())
        (torch.Size([3]), torch.Size([1]), True)
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden=(50, 50, 50),
        activation: str = ACTIVATION,
        restarts: int | None = None,
    ):
        super().__init__(latent_dim, data_dim, None, restarts)
        self.encoder = MLP((data_dim, *hidden, latent_dim), activation, restarts)

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=self.encoder(x)).to_event(1)
