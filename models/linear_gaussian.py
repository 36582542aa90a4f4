"""Linear-Gaussian (probabilistic PCA) zoo entry: the control case with a closed-form posterior."""

from __future__ import annotations

import torch
from torch import nn

from pyrofail.errors import UsageError
from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.zoo import register

__all__ = ["Affine", "LinearGaussian"]


class Affine(nn.Module):
    """The decoder :math:`f(z) = W z + b` (fixed, not trained)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T.to(z.dtype) + self.bias.to(z.dtype)


@register(
    "model",
    "linear_gaussian",
    summary="probabilistic PCA x = W z + b + noise: Gaussian posteriors in closed form (control)",
    failure="none for full-rank and richer guides; a mean-field guide pays exactly the KL of "
    "the best diagonal approximation to the correlated posterior",
    keywords=("analytic-posterior", "control", "correlated-posterior"),
    latent_dim=2,
    data_dim=3,
    noise_scale=0.5,
)
class LinearGaussian(LatentGaussian):
    r"""Probabilistic PCA (Tipping & Bishop 1999): the control process.

    .. math::

        z \sim \mathcal N(0, I_K), \qquad x \mid z \sim \mathcal N(W z + b, \sigma^2 I_D),

    so that, with :math:`\Lambda = I + W^\top W / \sigma^2`,

    .. math::

        p(z \mid x) = \mathcal N\big(\Lambda^{-1} W^\top (x - b) / \sigma^2,\ \Lambda^{-1}\big),
        \qquad p(x) = \mathcal N(b,\ W W^\top + \sigma^2 I).

    The default :math:`W` (``K = 2``, ``D = 3``, :math:`\sigma = 0.5`) has correlated columns,
    so the posterior is correlated: the best mean-field Gaussian (reverse KL) keeps the mean and
    takes variances :math:`1/\Lambda_{ii}`, with
    :math:`\mathrm{KL} = \tfrac12 (\sum_i \log \Lambda_{ii} - \log\det\Lambda)`
    (:meth:`mean_field_gap`). Every metric of the analysis can be checked against these.

    :param weight: ``(D, K)``; default a fixed correlated matrix for ``K = 2, D = 3``, else
        drawn from ``seed``.
    """

    DEFAULT_WEIGHT = ((1.0, 0.8), (0.6, 1.0), (0.3, -0.4))

    def __init__(
        self,
        latent_dim: int = 2,
        data_dim: int = 3,
        noise_scale: float = 0.5,
        weight=None,
        bias=None,
        seed: int = 0,
    ):
        if weight is None:
            if (latent_dim, data_dim) == (2, 3):
                weight = torch.tensor(self.DEFAULT_WEIGHT)
            else:
                weight = torch.randn(data_dim, latent_dim, generator=torch.Generator().manual_seed(seed))
        weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
        if weight.shape != (data_dim, latent_dim):
            raise UsageError(
                f"weight has shape {tuple(weight.shape)}; expected (data_dim, latent_dim) = "
                f"({data_dim}, {latent_dim})"
            )
        bias = torch.zeros(data_dim) if bias is None else torch.as_tensor(bias, dtype=weight.dtype)
        super().__init__(Affine(weight, bias), latent_dim, data_dim, noise_scale)

    def _precision(self) -> torch.Tensor:
        w = self.decoder.weight
        sigma2 = self.noise_scale.to(w.dtype) ** 2
        return torch.eye(self.latent_dim, dtype=w.dtype, device=w.device) + w.T @ w / sigma2

    def posterior(self, x: torch.Tensor) -> torch.distributions.MultivariateNormal:
        """The exact :math:`p(z \\mid x)` for every row of ``x`` (batch shape ``(N,)``)."""
        w, b = self.decoder.weight.to(x.dtype), self.decoder.bias.to(x.dtype)
        lam = self._precision().to(x.dtype)
        cov = torch.linalg.inv(lam)
        loc = (x - b) @ w @ cov.T / self.noise_scale.to(x.dtype) ** 2
        return torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """The exact :math:`p(x) = \\mathcal N(b, W W^\\top + \\sigma^2 I)`."""
        w, b = self.decoder.weight, self.decoder.bias
        cov = w @ w.T + self.noise_scale.to(w.dtype) ** 2 * torch.eye(self.data_dim, dtype=w.dtype)
        return torch.distributions.MultivariateNormal(b, covariance_matrix=cov)

    def mean_field_gap(self) -> float:
        """KL of the best mean-field Gaussian to the posterior (the same for every ``x``)."""
        lam = self._precision().double()
        return float(0.5 * (lam.diagonal().log().sum() - torch.logdet(lam)))
