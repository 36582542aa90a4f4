r"""A differentiable :math:`\log p_\theta(x)` by quadrature on a fixed grid, for training.

.. math::

    \log p_\theta(x) = \log \int p(z)\, p_\theta(x \mid z)\, dz
        \approx \log \sum_g w_g\, p(z_g)\, p_\theta(x \mid z_g),

with the nodes :math:`z_g` a regular grid of spacing :math:`h` on :math:`[-r, r]^K` and
:math:`w_g = h^K` (the midpoint rule). The decoder runs once per node for all points and all
restarts, so the exact maximum-likelihood objective costs about as much as a batch of
ELBO evaluations, and its gradient with respect to :math:`\theta` is exact for the rule. The
rule is accurate where posteriors are wider than :math:`h` (the analysis measures with the
adaptive mesh of :mod:`pyrofail.analysis.reference.grid`, which refines where the decoder moves).

The same nodes give the exact posterior weights :math:`p(z_g \mid x)` and so the aggregate
posterior :math:`\bar p(z) = \frac1N \sum_n p(z \mid x_n)` on the grid, and its divergence
from the prior, :math:`\mathrm{KL}(\bar p \,\|\, p(z))`.

Example:
    >>> import torch
    >>> from pyrofail.models import LinearGaussian
    >>> truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0)
    >>> x = truth.sample(5, seed=1).x
    >>> z, log_w = nodes(1, spacing=0.01)
    >>> exact = truth.marginal().log_prob(x)
    >>> bool(torch.allclose(log_px(truth, x, z, log_w), exact, atol=1e-4))
    True
"""

from __future__ import annotations

import math

import torch

__all__ = ["aggregate_kl", "log_joint_on_nodes", "log_px", "nodes"]

LOG_2PI = math.log(2 * math.pi)


def nodes(latent_dim: int, spacing: float = 0.02, radius: float = 6.0, dtype=None, device=None):
    """The grid ``(G, K)`` and the log quadrature weights ``(G,)`` (the prior not included)."""
    n = int(round(2 * radius / spacing)) + 1
    axis = torch.linspace(-radius, radius, n, dtype=dtype or torch.get_default_dtype(), device=device)
    z = torch.cartesian_prod(*([axis] * latent_dim)).reshape(-1, latent_dim)
    h = float(axis[1] - axis[0])
    return z, torch.full((z.shape[0],), latent_dim * math.log(h), dtype=z.dtype, device=device)


def log_joint_on_nodes(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\log w_g + \log p(z_g) + \log p_\theta(x_n \mid z_g)`: ``(N, G)``, or
    ``(R, N, G)`` for a model batched over ``R`` restarts. A latent-Gaussian model is
    evaluated as :math:`\lVert x\rVert^2 - 2 x \cdot f + \lVert f\rVert^2` (one matrix product);
    other models through ``log_joint``."""
    prior = -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI + log_w  # (G,)
    restarts = getattr(model, "restarts", None)
    if hasattr(model, "mean") and hasattr(model, "_log_sigma"):
        zz = z if restarts is None else z.expand(restarts, *z.shape)
        f = model.mean(zz)  # (G, D) or (R, G, D)
        log_sigma = model._log_sigma()
        if restarts is not None:
            log_sigma = log_sigma.reshape(restarts, 1, -1)  # (R, 1, 1 or D)
        inv = torch.exp(-2 * log_sigma)
        d = x.shape[-1]
        xs = x * inv  # (N, D) or (R, N, D)
        quad = (
            xs @ f.transpose(-1, -2)
            - 0.5 * (x * xs).sum(-1, keepdim=True)
            - 0.5 * (f * f * inv).sum(-1)[..., None, :]
        )
        norm = log_sigma.expand(*log_sigma.shape[:-1], d).sum(-1, keepdim=True) + 0.5 * d * LOG_2PI
        return quad - norm + prior
    zz = z[:, None, :] if restarts is None else z[:, None, None, :]
    lj = model.log_joint(zz, x)  # (G, N) or (G, R, N)
    lj = lj - (-0.5 * (zz * zz).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI)  # log p(x | z)
    return lj.movedim(0, -1) + prior


def log_px(model, x: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p_\theta(x_n)` per point by the rule: ``(N,)`` or ``(R, N)``."""
    return torch.logsumexp(log_joint_on_nodes(model, x, z, log_w), -1)


def aggregate_kl(lj: torch.Tensor, z: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\bar p \,\|\, p(z))` on the grid, from ``lj`` of
    :func:`log_joint_on_nodes` ``(..., N, G)``: the aggregate of the points' posterior masses
    against the prior's masses at the same nodes (``(...)``)."""
    n = lj.shape[-2]
    log_post = torch.logsumexp(torch.log_softmax(lj, -1), -2) - math.log(n)  # (..., G)
    # nodes without posterior mass: their terms are 0, and clamping keeps 0 * log 0 (and its
    # gradient) finite
    log_post = log_post.clamp_min(-80.0)
    log_prior = torch.log_softmax(-0.5 * (z * z).sum(-1) + log_w, -1)
    return (log_post.exp() * (log_post - log_prior)).sum(-1)
