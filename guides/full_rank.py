r"""Full-rank Gaussian amortized guide: a correlated Gaussian per data point."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyrofail.guides.base import AmortizedGuide
from pyrofail.nn import ACTIVATION, MLP
from pyrofail.zoo import register

__all__ = ["FullRankGuide"]


@register(
    "guide",
    "full_rank",
    summary="full-covariance Gaussian q(z|x) = N(mu(x), L(x) L(x)^T), Cholesky factor from an MLP",
    keywords=("gaussian", "unimodal", "full-rank", "correlated"),
)
class FullRankGuide(AmortizedGuide):
    r"""Full-rank Gaussian
    :math:`q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x),\, L_\phi(x) L_\phi(x)^\top\big)`.

    The encoder is an MLP from ``data_dim`` to :math:`2K + K(K-1)/2` outputs: the location
    :math:`\mu`, the diagonal of the lower-triangular Cholesky factor through
    :math:`L_{ii} = \operatorname{softplus}(\cdot) + s_{\min} > 0`, and its strictly lower
    entries, unconstrained. Every lower-triangular :math:`L` with a positive diagonal is
    reachable, so the family holds every non-degenerate Gaussian: on a linear-Gaussian process
    it contains the exact posterior, and the posterior-matching gap
    :math:`\mathrm{KL}(q \,\|\, p(z \mid x))` can be driven to zero (unlike the mean-field
    family, whose best gap is :math:`\tfrac12(\sum_i \log\Lambda_{ii} - \log\det\Lambda)` for a
    posterior precision :math:`\Lambda`). Kingma & Welling (arXiv:1312.6114, Appendix C)
    describe the Gaussian encoder; the Cholesky parameterisation is that of Titsias &
    Lázaro-Gredilla (2014, "Doubly stochastic variational Bayes").

    The off-diagonal outputs start at a tenth of the MLP's usual scale, so that a fresh guide
    is close to mean-field and correlations grow only as the data ask for them.

    :param hidden: hidden-layer widths (default three of 50, as in Yacoby et al.).
    :param min_scale: floor on the diagonal of :math:`L`, for numerical safety.
    """

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden=(50, 50, 50),
        activation: str = ACTIVATION,
        min_scale: float = 1e-4,
        restarts: int | None = None,
    ):
        super().__init__(latent_dim, data_dim, min_scale, restarts)
        k = self.latent_dim
        self.num_offdiag = k * (k - 1) // 2
        self.encoder = MLP((data_dim, *hidden, 2 * k + self.num_offdiag), activation, restarts)
        with torch.no_grad():
            self.encoder.weights[-1][..., 2 * k :].mul_(0.1)
            self.encoder.biases[-1][..., 2 * k :].mul_(0.1)

    def scale_tril(self, raw_diag: torch.Tensor, offdiag: torch.Tensor) -> torch.Tensor:
        """The Cholesky factor ``(..., K, K)`` from its raw diagonal and lower entries."""
        k = self.latent_dim
        diag = nn.functional.softplus(raw_diag) + self.min_scale
        tril = torch.diag_embed(diag)
        if self.num_offdiag:
            lower = torch.zeros(*offdiag.shape[:-1], k, k, dtype=offdiag.dtype, device=offdiag.device)
            # not a buffer: every tensor a batched module holds must carry the restart dim
            rows, cols = torch.tril_indices(k, k, offset=-1, device=offdiag.device)
            lower[..., rows, cols] = offdiag
            tril = tril + lower
        return tril

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        k = self.latent_dim
        loc, raw_diag, offdiag = self.encoder(x).split((k, k, self.num_offdiag), -1)
        return dist.MultivariateNormal(loc, scale_tril=self.scale_tril(raw_diag, offdiag))
