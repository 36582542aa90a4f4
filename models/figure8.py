"""Figure-8 zoo entry."""

import math

import torch
from torch import nn

from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.zoo import register

__all__ = ["Figure8", "Figure8Curve"]


class Figure8Curve(nn.Module):
    """The figure-8 decoder :math:`f(z)` for ``z`` of shape ``(..., 1)``, multiplied by ``scale``."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = math.pi * (0.6 + 1.8 * torch.special.ndtr(z[..., 0]))
        cos, sin = torch.cos(u), torch.sin(u)
        denom = sin * sin + 1.0
        a = self.scale * math.sqrt(2)
        return torch.stack((a / 2 * cos / denom, a * cos * sin / denom), -1)


@register(
    "model",
    "figure8",
    summary="1-D curve in 2-D that crosses itself; multimodal posteriors near the crossing",
    failure="Cx1 and Cx2: the MFG-VAE learns a wrong p(x) (the crossing is lost)",
    keywords=("multimodal-posterior", "self-intersecting-manifold", "data-distribution-failure"),
    latent_dim=1,
    data_dim=2,
    noise_scale=0.06,
    scale=0.6,
)
class Figure8(LatentGaussian):
    r"""Figure-8: a one-dimensional manifold in the plane that crosses itself.

    .. math::

        u = \pi\,(0.6 + 1.8\,\Phi(z)), \qquad
        f(z) = s\,\Big(\frac{\tfrac{\sqrt2}{2}\cos u}{\sin^2 u + 1},\;
                       \frac{\sqrt2 \cos u \sin u}{\sin^2 u + 1}\Big),

    with :math:`z \sim \mathcal N(0, 1)`, :math:`\sigma = 0.06`, scale :math:`s = 0.6`,
    :math:`K = 1`, :math:`D = 2`
    (Yacoby, Pan & Doshi-Velez, "Failure Modes of Variational Autoencoders and Their Effects on
    Downstream Tasks", arXiv:2007.07124, Figure-8 example).

    Failure mode: near the crossing at the origin, points from ``z`` close to 0 and from the far
    tails of ``z`` overlap, so the true posterior is multimodal for many ``x`` (condition Cx1), and
    no decoder with simpler posteriors reproduces the crossing (Cx2): the mean-field VAE learns a
    wrong :math:`p(x)`.

    Constants: the paper does not state them. :math:`\sigma = 0.06`, :math:`s = 0.6` are
    calibrated against its Table 1 (docs/results.md): the truth's entropy
    :math:`H = -\mathbb E \log p(x) = -0.41` matches the IWAE test bound at K = 1
    (:math:`-0.388 \pm 0.044`), and its :math:`I(x; z) = 2.38` lies between the paper's IWAE and
    VAE values. Only :math:`s/\sigma` (here 10) changes the shape of the problem; :math:`s`
    shifts every log-density by :math:`D \log s`. The earlier defaults (:math:`\sigma =
    \sqrt{0.02}`, :math:`s = 1`; :math:`H = 0.89`) stay reachable as
    ``zoo.model("figure8", noise_scale=0.02**0.5, scale=1.0)``.
    """

    def __init__(self, noise_scale: float = 0.06, scale: float = 0.6):
        super().__init__(Figure8Curve(scale), latent_dim=1, data_dim=2, noise_scale=noise_scale)
