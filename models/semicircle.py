"""Semicircle zoo entry: two labelled classes on one manifold (the semi-supervised failure)."""

import math

import torch
from torch import nn

from pyrofail.models.m2 import LabelledLatentGaussian
from pyrofail.zoo import register

__all__ = ["Semicircle", "SemicircleCurve"]


class SemicircleCurve(nn.Module):
    r"""The class curves :math:`f(z, y) = (\cos\theta, \sin\theta)` with
    :math:`\theta = \pi\,\Phi(z)^2` for :math:`y = 0` and :math:`\pi\,(1 - \Phi(z)^2)` for
    :math:`y = 1`; input ``(..., 3)``: ``z`` then ``onehot(y)``.

    Example:
        >>> import torch
        >>> f = SemicircleCurve()
        >>> f(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))  # z = 0: theta = pi/4, 3 pi/4
        tensor([[ 0.7071,  0.7071],
                [-0.7071,  0.7071]])
    """

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u2 = torch.special.ndtr(h[..., 0]) ** 2
        second = h[..., 2]  # the weight of class 1 in onehot(y)
        theta = math.pi * ((1 - second) * u2 + second * (1 - u2))
        return torch.stack((torch.cos(theta), torch.sin(theta)), -1)


@register(
    "model",
    "semicircle",
    summary="two labelled classes on one semicircle, different densities; bimodal p(z|x) when y is unknown",
    failure="semi-supervised (Yacoby et al.): the M2 MFG-VAE is expected to collapse the two class "
    "curves (functional collapse), so p(x|y), p(x), the latent space and the counterfactuals are wrong",
    keywords=("semi-supervised", "labels", "counterfactual", "functional-collapse", "multimodal-posterior"),
    latent_dim=1,
    data_dim=2,
    noise_scale=0.05,
    labels=True,
    num_classes=2,
)
class Semicircle(LabelledLatentGaussian):
    r"""Semicircle: two patient types :math:`y` whose symptoms :math:`x` lie on one manifold.

    .. math::

        y \sim \operatorname{Bernoulli}(1/2), \qquad z \sim \mathcal N(0, 1), \qquad
        \theta = \begin{cases} \pi\,\Phi(z)^2 & y = 0 \\ \pi\,(1 - \Phi(z)^2) & y = 1 \end{cases},

    .. math::

        x \mid z, y \sim \mathcal N\big((\cos\theta, \sin\theta),\ \sigma^2 I_2\big), \qquad
        \sigma = 0.05,

    :math:`K = 1`, :math:`D = 2`, :math:`C = 2` (Yacoby, Pan & Doshi-Velez,
    arXiv:2007.07124, the "discrete semi-circle" of their semi-supervised experiment). Both
    classes lie on the upper unit semicircle, with different densities along it: the angle of
    class 0 is :math:`\pi u^2` (:math:`u \sim U(0, 1)`, density :math:`\propto \theta^{-1/2}`,
    crowded near :math:`\theta = 0`) and that of class 1 is its mirror image
    :math:`\pi - \pi u^2`. The true counterfactual :math:`f(z, 1 - y)` of a point is therefore
    its mirror image across the vertical axis.

    Posteriors. With the label known, :math:`p(z \mid x, y)` is unimodal (each class curve is
    monotone in :math:`z`); ``given_label(y)`` is the latent-Gaussian process at that label, for
    quadrature of :math:`p(x \mid y)` and :math:`p(z \mid x, y)`. With the label unknown,
    ``log_joint(z, x)`` sums it out, :math:`\log \sum_y \tfrac12\, p(z)\, p(x \mid z, y)`, so
    quadrature over :math:`z` gives :math:`p(x) = \tfrac12 \sum_y p(x \mid y)` and a posterior
    :math:`p(z \mid x) = \sum_y p(y \mid x)\, p(z \mid x, y)` with one mode per class, at
    :math:`\Phi^{-1}(\sqrt{\theta/\pi})` and :math:`\Phi^{-1}(\sqrt{1 - \theta/\pi})`, which
    differ for every :math:`x` off the top of the circle: bimodal for most :math:`x`.

    Failure mode (functional collapse): trained semi-supervised with a mean-field Gaussian
    :math:`q(z \mid x, y)` and the ELBO, the M2 VAE is expected to pull the two learned class
    curves :math:`z \mapsto f_\theta(z, 0)` and :math:`f_\theta(z, 1)` onto each other (the
    posteriors become simpler), so :math:`p_\theta(x \mid y)`, :math:`p_\theta(x)` and the
    latent space are wrong, and the counterfactual :math:`f_\theta(z, 1 - y)` of a point is
    near the point itself instead of its mirror image. ``pyrofail.analysis.semisupervised``
    measures all of these.

    :param noise_scale: :math:`\sigma`.

    Example:
        >>> from pyrofail import zoo
        >>> data = zoo.model("semicircle").sample(4, seed=0)
        >>> data.x.shape, data.z.shape, data.y.dtype
        (torch.Size([4, 2]), torch.Size([4, 1]), torch.int64)
    """

    def __init__(self, noise_scale: float = 0.05):
        super().__init__(SemicircleCurve(), latent_dim=1, data_dim=2, num_classes=2, noise_scale=noise_scale)
