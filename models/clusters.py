"""Clusters zoo entry."""

import math

import torch
from torch import nn

from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.zoo import register

__all__ = ["ClusterSteps", "Clusters"]


class ClusterSteps(nn.Module):
    """The clusters decoder :math:`f(z)` for ``z`` of shape ``(..., 1)``: centres on the circle
    of radius ``scale``."""

    def __init__(self, beta: float = 20.0, scale: float = 1.0):
        super().__init__()
        self.beta = float(beta)
        angles = torch.tensor([math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)])
        self.register_buffer("centres", float(scale) * torch.stack((angles.cos(), angles.sin()), -1))
        self.register_buffer("edges", torch.special.ndtri(torch.tensor([1 / 3, 2 / 3])))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.centres.to(z.dtype)
        steps = torch.sigmoid(self.beta * (z - self.edges.to(z.dtype)))  # (..., 2)
        return c[0] + steps @ (c[1:] - c[:-1])


@register(
    "model",
    "clusters",
    summary="three clusters on a circle; flat, non-Gaussian posteriors within a cluster",
    failure="Cx1 and Cx2: the MFG-VAE spreads mass along the edges of the triangle",
    keywords=("clustered", "flat-posterior", "data-distribution-failure"),
    latent_dim=1,
    data_dim=2,
    noise_scale=1.05,
    scale=5.0,
)
class Clusters(LatentGaussian):
    r"""Clusters: three clusters on the unit circle joined by steep sigmoids.

    .. math::

        f(z) = s\,\Big(c_1 + \sum_{k=1}^{2} (c_{k+1} - c_k)\,
               \operatorname{sigmoid}\big(\beta\,(z - \Phi^{-1}(k/3))\big)\Big),

    with centres :math:`c_k` on the unit circle at angles :math:`\pi/2 + 2\pi (k-1)/3`,
    scale :math:`s = 5`, :math:`\beta = 20`, :math:`z \sim \mathcal N(0, 1)`, :math:`\sigma = 1.05`,
    :math:`K = 1`, :math:`D = 2` (Yacoby et al., arXiv:2007.07124, Clusters example).

    Failure mode: each cluster is the image of a whole interval of ``z``, so the posterior of a
    point in a cluster is flat over that interval and not Gaussian (Cx1); a decoder that walks
    along the edges of the triangle between the clusters has simpler posteriors but a wrong
    :math:`p(x)` (Cx2), and that is what the mean-field VAE learns.

    Constants: the paper does not state them. :math:`\sigma = 1.05`, :math:`s = 5` are
    calibrated against its Table 1 (docs/results.md): the truth's entropy
    :math:`H = -\mathbb E \log p(x) = 4.26` matches the IWAE test bound at K = 1
    (:math:`4.287 \pm 0.047`), and its :math:`I(x; z) = 1.32` lies between the paper's IWAE and
    VAE values. Only :math:`s/\sigma` changes the shape of the problem; :math:`s` shifts every
    log-density by :math:`D \log s`. The earlier defaults (:math:`\sigma = 0.1`, :math:`s = 1`;
    :math:`H = -0.16`) stay reachable as ``zoo.model("clusters", noise_scale=0.1, scale=1.0)``.
    """

    def __init__(self, noise_scale: float = 1.05, beta: float = 20.0, scale: float = 5.0):
        super().__init__(ClusterSteps(beta, scale), latent_dim=1, data_dim=2, noise_scale=noise_scale)
