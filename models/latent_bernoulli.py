r"""A latent-Gaussian model of binary data: the Bernoulli likelihood.

.. math::

    z \sim \mathcal N(0, I_K), \qquad
    x_d \mid z \sim \operatorname{Bernoulli}\big(\operatorname{sigmoid}(\ell_d(z))\big) \quad (d \le D),

with the decoder giving the logits :math:`\ell(z)`, as in the binarised-MNIST VAE of Kingma &
Welling (2014, appendix C.1). It keeps the model contract of
:class:`~pyrofail.models.latent_gaussian.LatentGaussian` (``model``, ``log_joint``, ``sample``,
restart batching) so that every guide and objective trains it; it has no noise scale, so the
grid reference integrates its ``log_joint`` directly.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrofail.data import Dataset
from pyrofail.errors import UsageError, check_positive_int
from pyrofail.nn import Batched, data_plates

__all__ = ["LatentBernoulli"]

LOG_2PI = math.log(2 * math.pi)


class LatentBernoulli(Batched, PyroModule):
    r"""A latent-Gaussian process with Bernoulli observations whose logits are ``decoder(z)``.

    :param decoder: a module mapping ``(..., K)`` to logits ``(..., D)`` (with ``restarts=R``:
        ``(..., R, N, K)`` to ``(..., R, N, D)``); to train it with restarts, build it from
        :class:`pyrofail.nn.MLP`.
    :param latent_dim: :math:`K`.
    :param data_dim: :math:`D`.
    :param restarts: ``None``, or ``R`` for ``R`` independent copies in one batched module.

    Example:
        >>> from pyrofail.nn import MLP
        >>> m = LatentBernoulli(MLP((1, 8, 3)), latent_dim=1, data_dim=3)
        >>> d = m.sample(4, seed=0)
        >>> tuple(d.x.shape), bool(((d.x == 0) | (d.x == 1)).all()), tuple(m.log_joint(d.z, d.x).shape)
        ((4, 3), True, (4,))
    """

    def __init__(self, decoder: nn.Module, latent_dim: int, data_dim: int, *, restarts: int | None = None):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.restarts = restarts
        self.decoder = decoder

    def _reference(self) -> torch.Tensor:
        # dtype and device of the weights (an analytic decoder may have none)
        return next(itertools.chain(self.parameters(), self.buffers()), torch.empty(()))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        r"""The decoder's logits :math:`\ell(z)`."""
        return self.decoder(z)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathbb E[x \mid z] = \operatorname{sigmoid}(\ell(z))`, the probability of a 1."""
        return torch.sigmoid(self.logits(z))

    def prior(self, like: torch.Tensor | None = None) -> dist.Distribution:
        """:math:`p(z) = \\mathcal N(0, I_K)` with event shape ``(K,)``."""
        ref = self._reference() if like is None else like
        return dist.Normal(ref.new_zeros(self.latent_dim), 1.0).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z) = \\prod_d \\operatorname{Bernoulli}(x_d; \\operatorname{sigmoid}
        \\ell_d(z))` with event shape ``(D,)``."""
        return dist.Bernoulli(logits=self.logits(z)).to_event(1)

    def model(self, x: torch.Tensor | None = None, n: int | None = None):
        """The Pyro model: ``z ~ p(z)`` and ``x ~ p(x | z)`` in the ``data`` plate.

        Pass observed 0/1 ``x`` of shape ``(N, D)``, or ``n`` to draw from the prior predictive.
        Returns ``z``.
        """
        return self(x, n)

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        if x is None and n is None:
            raise UsageError("model() needs observed x or a number of points n")
        n = x.shape[-2] if x is not None else n
        with data_plates(n, self.restarts):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x, z) = \log \mathcal N(z; 0, I)
        + \sum_d \big(x_d \ell_d(z) - \log(1 + e^{\ell_d(z)})\big)`.

        ``z`` is ``(..., K)`` and ``x`` is ``(..., D)``; leading shapes broadcast as in
        :meth:`LatentGaussian.log_joint <pyrofail.models.latent_gaussian.LatentGaussian.log_joint>`.
        """
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * LOG_2PI
        return log_prior + self.log_likelihood(z, x)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x \mid z) = \sum_d x_d \ell_d - \operatorname{softplus}(\ell_d)`,
        broadcasting like :meth:`log_joint`."""
        logits = self.logits(z)
        return (x * logits - nn.functional.softplus(logits)).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` points ``(x, z)`` drawn with a private generator: the same seed gives the same
        data on CPU whatever the global random state."""
        n = check_positive_int("n", n)
        if self.restarts is not None:
            raise UsageError("sample() needs an un-batched model; use take_restart first")
        g = torch.Generator().manual_seed(int(seed))
        ref = self._reference()
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        z = torch.randn(n, self.latent_dim, generator=g, dtype=dtype)
        u = torch.rand(n, self.data_dim, generator=g, dtype=dtype)
        z = z.to(ref.device)
        x = (u.to(ref.device) < self.mean(z)).to(dtype)
        return Dataset(x=x, z=z)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, restarts={self.restarts}"
