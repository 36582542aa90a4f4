r"""Mean-field Gaussian amortized guide (the MFG of an MFG-VAE)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyrofail.guides.base import AmortizedGuide
from pyrofail.nn import ACTIVATION, MLP
from pyrofail.zoo import register

__all__ = ["MeanFieldGuide"]


@register(
    "guide",
    "mean_field",
    summary="diagonal Gaussian q(z|x) = N(mu(x), diag sigma(x)^2) from an MLP encoder",
    keywords=("gaussian", "unimodal", "mean-field"),
)
class MeanFieldGuide(AmortizedGuide):
    r"""Mean-field Gaussian
    :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2)`.

    The encoder is an MLP from ``data_dim`` to ``2 * latent_dim`` outputs, the location and
    the scale through :math:`\operatorname{softplus}(\cdot) + s_{\min}` (Kingma & Welling,
    "Auto-Encoding Variational Bayes", arXiv:1312.6114).

    :param hidden: hidden-layer widths (default three of 50, as in Yacoby et al.).
    :param min_scale: floor on the posterior standard deviation, for numerical safety.
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
        self.encoder = MLP((data_dim, *hidden, 2 * latent_dim), activation, restarts)

    def distribution(self, x: torch.Tensor) -> dist.Distribution:
        loc, raw = self.encoder(x).split(self.latent_dim, -1)
        scale = nn.functional.softplus(raw) + self.min_scale
        return dist.Normal(loc, scale).to_event(1)
