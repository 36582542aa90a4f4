r"""The latent-Gaussian generative process shared by every zoo entry and every learned model.

.. math::

    z \sim \mathcal N(0, I_K), \qquad
    x \mid z \sim \mathcal N\big(f(z), \operatorname{diag}(\sigma_1^2, \dots, \sigma_D^2)\big),

with one :math:`\sigma` shared by every feature (the zoo's processes) or one per feature
(``noise_per_feature=True``: columns measured with different precision), fixed or learned. A
ground-truth zoo entry fixes :math:`f` to a known function; a learned model uses a neural
decoder with the same prior and likelihood, so every metric applies to both. Binary data take
the Bernoulli sibling, :class:`~pyrofail.models.latent_bernoulli.LatentBernoulli`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrofail.data import Dataset
from pyrofail.errors import UsageError, check_positive_float, check_positive_int
from pyrofail.nn import Batched, data_plates

LOG_2PI = math.log(2 * math.pi)


class LatentGaussian(Batched, PyroModule):
    r"""A latent-Gaussian process with decoder ``f``: the model contract of pyrofail.

    :param decoder: a module mapping ``(..., K)`` to ``(..., D)`` (with ``restarts=R``:
        ``(..., R, N, K)`` to ``(..., R, N, D)``).
    :param latent_dim: :math:`K`.
    :param data_dim: :math:`D`.
    :param noise_scale: :math:`\sigma > 0`: a float, or one per restart ``(R,)``; with
        ``noise_per_feature`` a float (every feature), ``(D,)`` or ``(R, D)``.
    :param learn_noise: whether :math:`\log\sigma` is a trainable parameter.
    :param noise_per_feature: one :math:`\sigma_d` per feature (``log_noise`` of shape
        ``(D,)``, ``(R, D)`` when batched) instead of one shared :math:`\sigma`.
    :param restarts: ``None``, or ``R`` for ``R`` independent copies in one batched module.

    The Pyro model (:meth:`model`) has a latent site ``"z"`` and an observed site ``"x"``, both
    in the ``data`` plate (inside a ``restarts`` plate when batched). :meth:`log_joint` is the
    one density that the grid, NUTS and importance sampling use.
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        data_dim: int,
        noise_scale=1.0,
        *,
        learn_noise: bool = False,
        noise_per_feature: bool = False,
        restarts: int | None = None,
    ):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.restarts = restarts
        self.noise_per_feature = bool(noise_per_feature)
        self.decoder = decoder
        noise = torch.as_tensor(noise_scale, dtype=torch.get_default_dtype())
        if noise.numel() == 1:
            check_positive_float("noise_scale", float(noise))
            noise = noise.reshape(())
        elif not bool(torch.isfinite(noise).all() and (noise > 0).all()):
            raise UsageError(f"noise_scale={noise.tolist()} is not allowed; expected finite values > 0")
        shape = self.batch_shape + ((self.data_dim,) if self.noise_per_feature else ())
        try:
            log_noise = noise.log().expand(shape).clone()
        except RuntimeError:
            allowed = "a float, (D,) or (R, D)" if self.noise_per_feature else "a float or (R,)"
            hint = "" if self.noise_per_feature else "; for one sigma per feature pass noise_per_feature=True"
            raise UsageError(
                f"noise_scale has shape {tuple(noise.shape)}; expected {allowed} for "
                f"data_dim={self.data_dim}, restarts={restarts}{hint}"
            ) from None
        if learn_noise:
            self.log_noise = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise", log_noise)

    # -- the process --------------------------------------------------------------------
    @property
    def noise_scale(self) -> torch.Tensor:
        """The current :math:`\\sigma` (detached): ``()`` or ``(R,)``; per feature ``(D,)``
        or ``(R, D)``."""
        return self.log_noise.detach().exp()

    @property
    def learn_noise(self) -> bool:
        return isinstance(self.log_noise, nn.Parameter)

    def _log_sigma(self) -> torch.Tensor:
        # broadcastable against (..., N, D), or (..., R, N, D) when batched: a shared sigma
        # is () or (R, 1, 1), a per-feature one (D,) or (R, 1, D)
        s = self.log_noise
        if self.restarts is None:
            return s
        return s.reshape(-1, 1, self.data_dim if self.noise_per_feature else 1)

    def _log_norm(self, log_sigma: torch.Tensor) -> torch.Tensor:
        # sum_d log sigma_d, broadcastable against (..., N) or (..., R, N)
        if self.noise_per_feature:
            return log_sigma.sum(-1)
        return self.data_dim * log_sigma.squeeze(-1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder :math:`f(z)`."""
        return self.decoder(z)

    def prior(self) -> dist.Distribution:
        """:math:`p(z) = \\mathcal N(0, I_K)` with event shape ``(K,)``."""
        zero = self.log_noise.new_zeros(self.latent_dim)
        return dist.Normal(zero, 1.0).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z) = \\mathcal N(f(z), \\operatorname{diag}(\\sigma_1^2, \\dots,
        \\sigma_D^2))` with event shape ``(D,)``."""
        return dist.Normal(self.mean(z), self._log_sigma().exp()).to_event(1)

    def model(self, x: torch.Tensor | None = None, n: int | None = None):
        """The Pyro model: ``z ~ p(z)`` and ``x ~ p(x | z)`` in the ``data`` plate.

        Pass observed ``x`` of shape ``(N, D)``, or ``n`` to draw ``n`` points from the prior
        predictive. Returns ``z``. (It runs through ``__call__`` so that a learned decoder's
        parameters reach Pyro's parameter store.)
        """
        return self(x, n)

    def forward(self, x: torch.Tensor | None = None, n: int | None = None):
        if x is None and n is None:
            raise UsageError("model() needs observed x or a number of points n")
        n = x.shape[-2] if x is not None else n
        with data_plates(n, self.restarts):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)
        return z

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x, z) = \log \mathcal N(z; 0, I) + \sum_d \log \mathcal N(x_d; f_d(z), \sigma_d^2)`.

        ``z`` is ``(..., K)`` and ``x`` is ``(..., D)``; leading shapes broadcast, so a grid
        ``(G, 1, K)`` against data ``(N, D)`` gives ``(G, N)`` with ``f`` evaluated ``G`` times.
        """
        log_sigma = self._log_sigma()
        k, d = self.latent_dim, self.data_dim
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * k * LOG_2PI
        resid = (x - self.mean(z)) * torch.exp(-log_sigma)
        log_lik = -0.5 * (resid * resid).sum(-1) - self._log_norm(log_sigma) - 0.5 * d * LOG_2PI
        return log_prior + log_lik

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x \\mid z)`, broadcasting like :meth:`log_joint`."""
        return self.log_joint(z, x) + 0.5 * (z * z).sum(-1) + 0.5 * self.latent_dim * LOG_2PI

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` points ``(x, z)`` drawn from the process with a private generator: the same
        seed gives the same data on CPU whatever the global random state."""
        n = check_positive_int("n", n)
        if self.restarts is not None:
            raise UsageError("sample() needs an un-batched model; use take_restart first")
        g = torch.Generator().manual_seed(int(seed))
        dtype = self.log_noise.dtype
        z = torch.randn(n, self.latent_dim, generator=g, dtype=dtype)
        eps = torch.randn(n, self.data_dim, generator=g, dtype=dtype)
        device = self.log_noise.device
        x = self.mean(z.to(device)) + self.noise_scale * eps.to(device)
        return Dataset(x=x, z=z.to(device))

    def extra_repr(self) -> str:
        sigma = self.noise_scale
        if self.noise_per_feature:
            sigma = "per feature"
        else:
            sigma = f"{float(sigma):.4g}" if sigma.numel() == 1 else "per restart"
        return (
            f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, noise_scale={sigma}, "
            f"learn_noise={self.learn_noise}, restarts={self.restarts}"
        )
