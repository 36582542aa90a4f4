r"""A learned model whose decoder gives a mean and a variance for every feature and every point.

.. math::

    z \sim p(z), \qquad x \mid z \sim \mathcal N\big(\mu_\theta(z),\ \operatorname{diag} e^{v_\theta(z)}\big),
    \qquad (\mu_\theta, v_\theta) = \text{MLP}_\theta(z),

with :math:`p(z) = \mathcal N(0, I_K)` (``prior="gaussian"``) or independent fair bits
:math:`p(z) = \operatorname{Bernoulli}(1/2)^K` (``prior="bernoulli"``: the blog VAE of
:mod:`pyrofail.models.degenerate_line`). The log-variance :math:`v_\theta(z)` is an
unconstrained output with no floor, on purpose: on data with an empty direction (a constant
feature, a line in the plane) maximum likelihood drives it to :math:`-\infty`; this is the
failure the ``spread`` objective (:mod:`pyrofail.objectives.spread`) repairs.

It keeps the model contract (``model``, ``log_joint``, ``sample``, restart batching through
:class:`pyrofail.nn.MLP`), so ``pf.fit(x, model=HeteroscedasticDecoder(...), noise_scale=1.0, ...)``
trains it with any objective (``noise_scale`` is required by ``fit`` for a Gaussian
likelihood but unused by this model); restarts start from copies of the one model given, so
vary the seed of the model's construction rather than ``restarts``. It has no ``noise_scale``
attribute, so the grid reference integrates its ``log_joint`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyrofail.data import Dataset
from pyrofail.errors import UsageError, check_choice, check_positive_int
from pyrofail.models.degenerate_line import Bits
from pyrofail.nn import ACTIVATION, MLP, Batched, data_plates

__all__ = ["PRIORS", "HeteroscedasticDecoder"]

PRIORS = ("gaussian", "bernoulli")
LOG_2PI = math.log(2 * math.pi)


class HeteroscedasticDecoder(Batched, PyroModule):
    r"""Learned mean and log-variance per feature and per point (module docstring).

    :param latent_dim: :math:`K`.
    :param data_dim: :math:`D`.
    :param hidden: hidden widths of the decoder MLP, from :math:`K` to :math:`2D` outputs (the
        means, then the log-variances).
    :param prior: ``"gaussian"`` or ``"bernoulli"``.
    :param init_log_variance: added to the initial bias of the log-variance outputs (0: they
        start near :math:`\log 1`). A variance that starts as wide as the data lets the decoder
        explain them with no use of :math:`z`; starting narrower makes it use the latent.
    :param restarts: ``None``, or ``R`` for ``R`` independent copies in one batched module.

    Example:
        >>> m = HeteroscedasticDecoder(1, 2, hidden=(8,), prior="bernoulli")
        >>> d = m.sample(5, seed=0)
        >>> tuple(d.x.shape), sorted(set(d.z.flatten().tolist())) <= [0.0, 1.0]
        ((5, 2), True)
        >>> tuple(m.log_variance(d.z).shape), tuple(m.log_joint(d.z, d.x).shape)
        ((5, 2), (5,))
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden: Sequence[int] = (50, 50, 50),
        activation: str = ACTIVATION,
        *,
        prior: str = "gaussian",
        init_log_variance: float = 0.0,
        restarts: int | None = None,
    ):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.prior_name = check_choice("prior", prior, PRIORS)
        self.restarts = restarts
        self.decoder = MLP((self.latent_dim, *hidden, 2 * self.data_dim), activation, restarts)
        with torch.no_grad():  # where the log-variances start (an offset on their output bias)
            self.decoder.biases[-1][..., self.data_dim :] += float(init_log_variance)

    def _outputs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(z)
        return out[..., : self.data_dim], out[..., self.data_dim :]

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        r"""The decoder's mean :math:`\mu_\theta(z)`."""
        return self._outputs(z)[0]

    def log_variance(self, z: torch.Tensor) -> torch.Tensor:
        r"""The decoder's log-variance :math:`v_\theta(z)` per feature."""
        return self._outputs(z)[1]

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        r"""The standard deviation :math:`e^{v_\theta(z)/2}` per feature."""
        return (0.5 * self.log_variance(z)).exp()

    def prior(self, like: torch.Tensor | None = None) -> dist.Distribution:
        """:math:`p(z)`: ``Normal(0, 1)`` or fair :class:`~pyrofail.models.degenerate_line.Bits`,
        event shape ``(K,)``."""
        ref = self.decoder.weights[0] if like is None else like
        zeros = ref.new_zeros(self.latent_dim)
        if self.prior_name == "bernoulli":
            return Bits(zeros)
        return dist.Normal(zeros, 1.0).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        r""":math:`p(x \mid z) = \mathcal N(\mu_\theta(z), \operatorname{diag} e^{v_\theta(z)})`,
        event shape ``(D,)``."""
        mu, log_var = self._outputs(z)
        return dist.Normal(mu, (0.5 * log_var).exp()).to_event(1)

    def model(self, x: torch.Tensor | None = None, n: int | None = None):
        """The Pyro model: ``z ~ p(z)`` and ``x ~ p(x | z)`` in the ``data`` plate (inside a
        ``restarts`` plate when batched). Returns ``z``."""
        return self(x, n)

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        if x is None and n is None:
            raise UsageError("model() needs observed x or a number of points n")
        n = x.shape[-2] if x is not None else n
        with data_plates(n, self.restarts):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_d \log \mathcal N(x_d;\ \mu_d(z), e^{v_d(z)})`, broadcasting ``z`` against ``x``."""
        mu, log_var = self._outputs(z)
        resid = x - mu
        return -0.5 * (resid * resid * (-log_var).exp() + log_var + LOG_2PI).sum(-1)

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(z) + \log p(x \mid z)`: ``z`` ``(..., K)``, ``x`` ``(..., D)``."""
        return self.prior(z).log_prob(z) + self.log_likelihood(z, x)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` points ``(x, z)`` with a private generator: same seed, same data on CPU."""
        n = check_positive_int("n", n)
        if self.restarts is not None:
            raise UsageError("sample() needs an un-batched model; use take_restart first")
        g = torch.Generator().manual_seed(int(seed))
        ref = self.decoder.weights[0]
        if self.prior_name == "bernoulli":
            z = torch.bernoulli(torch.full((n, self.latent_dim), 0.5, dtype=ref.dtype), generator=g)
        else:
            z = torch.randn(n, self.latent_dim, generator=g, dtype=ref.dtype)
        eps = torch.randn(n, self.data_dim, generator=g, dtype=ref.dtype)
        z = z.to(ref.device)
        mu, log_var = self._outputs(z)
        return Dataset(x=mu + (0.5 * log_var).exp() * eps.to(ref.device), z=z)

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, prior={self.prior_name!r}, "
            f"restarts={self.restarts}"
        )
