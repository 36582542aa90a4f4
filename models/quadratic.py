"""Quadratic zoo entry (Example 1 of Yacoby et al.)."""

import torch
from torch import nn

from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.zoo import register

__all__ = ["CentredSquare", "Quadratic"]


class CentredSquare(nn.Module):
    """The quadratic decoder :math:`f(z) = (\\Phi(z) - 1/2)^2` for ``z`` of shape ``(..., 1)``."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.special.ndtr(z) - 0.5) ** 2


@register(
    "model",
    "quadratic",
    summary="x = (u - 1/2)^2 + noise: two posterior modes of equal mass, p(x) learnable",
    failure="Cz1 and Cz2: the MFG-VAE keeps p(x) but learns a wrong latent space",
    keywords=("multimodal-posterior", "non-identifiable", "latent-space-failure"),
    latent_dim=1,
    data_dim=1,
    noise_scale=0.01,
)
class Quadratic(LatentGaussian):
    r"""Quadratic (Example 1 of Yacoby et al.): a symmetric decoder with two-mode posteriors.

    .. math::

        f(z) = (\Phi(z) - 0.5)^2, \qquad z \sim \mathcal N(0, 1), \quad \sigma = 0.01,

    the same process as :math:`u \sim U(0, 1)`, :math:`x \sim \mathcal N((u - 0.5)^2, \sigma^2)`;
    :math:`K = D = 1` (arXiv:2007.07124, Example 1).

    Failure mode: :math:`f(z) = f(-z)`, so every posterior has two modes of exactly equal mass
    (Cx1 = Cz1). A monotone decoder fits :math:`p(x)` equally well with unimodal posteriors
    (Cz2; Cx2 fails): the mean-field VAE keeps :math:`p(x)` but learns the wrong latent space.
    """

    def __init__(self, noise_scale: float = 0.01):
        super().__init__(CentredSquare(), latent_dim=1, data_dim=1, noise_scale=noise_scale)
