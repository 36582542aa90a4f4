"""Decoders built to make a reference posterior fail, and their exact posteriors.

For K <= 2 the grid (:mod:`pyrofail.analysis.reference.grid`) is exact. For K >= 3 a decoder that acts on
each latent coordinate separately, f(z) = (g_1(z_1), ..., g_K(z_K)), makes the posterior a
product of one-dimensional posteriors: the prior and the isotropic likelihood both factorise,

    p(z | x) = prod_k p(z_k | x_k),   log p(x) = sum_k log p_k(x_k),

with p_k the process z_k ~ N(0, 1), x_k | z_k ~ N(g_k(z_k), sigma^2 I). Each factor is a 1-D grid,
so draws (independent per coordinate) and log p(x) are exact: :func:`exact_reference` stores
them in the reference layout, to be compared with the NUTS reference by
``pyrofail.analysis.reference.modes.reference_mass_error`` and ``log_px``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Parabola(nn.Module):
    """g(z) = z^2 + 0.3 z: two modes at the roots of g(z) = x, of unequal masses (ratio
    exp(0.3 sqrt(0.09 + 4x) / 2)), narrow (width sigma / |2z + 0.3|) and far from the origin."""

    def forward(self, z):
        return z * z + 0.3 * z


class Step(nn.Module):
    """g(z) = Phi((z - 1.5) / 4e-4): with sigma = 0.01 and x about 4.5-5.5 sigma, a broad mode on
    z < 1.5 (g ~ 0 there, a poor fit) holding 10-50% of the mass, its peak 9-13 nats below the
    narrow one (width ~4e-5) where g crosses x."""

    def forward(self, z):
        return torch.special.ndtr((z - 1.5) / 4e-4)


class Cubic(nn.Module):
    """g(z) = z^3 - 3 z: three modes for |x| < 2."""

    def forward(self, z):
        return z**3 - 3 * z


class Sine(nn.Module):
    """g(z) = sin(2.5 z): a mode every 1.26 along z, four or so of non-negligible mass."""

    def forward(self, z):
        return torch.sin(2.5 * z)


class Factorised(nn.Module):
    """f(z) = (g_1(z_1), ..., g_K(z_K)): every part maps ``(..., 1)`` to ``(..., D_k)``."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, z):
        return torch.cat([g(z[..., k : k + 1]) for k, g in enumerate(self.parts)], -1)


def _dims(parts) -> list[int]:
    with torch.no_grad():
        return [int(g(torch.zeros(1, 1, dtype=torch.float64)).shape[-1]) for g in parts]


def factorised_model(parts, sigma: float):
    """The latent-Gaussian process of :class:`Factorised` ``parts`` with noise ``sigma``."""
    from pyrofail.models import LatentGaussian

    return LatentGaussian(Factorised(parts), len(parts), sum(_dims(parts)), sigma).double()


def exact_reference(parts, sigma: float, x: torch.Tensor, *, num_draws: int = 8000, seed: int = 0):
    """The exact reference of the factorised process at ``x``: independent exact draws of every
    coordinate from its 1-D grid, ``log p(x)`` the sum of the coordinates' (method ``"exact"``)."""
    from pyrofail.analysis.reference.grid import grid_posterior
    from pyrofail.analysis.reference.idata import build_inference_data, provenance
    from pyrofail.models import LatentGaussian

    x = x.double()
    dims, start, z, log_px, mean, var = _dims(parts), 0, [], 0.0, [], []
    for k, (g, d) in enumerate(zip(parts, dims)):
        one = LatentGaussian(g, 1, d, sigma).double()
        post = grid_posterior(one, x[:, start : start + d], num_draws=num_draws, seed=seed + k)
        z.append(post.draws)
        log_px = log_px + post.log_px
        mean.append(post.mean)
        var.append(post.cov[:, 0, 0])
        start += d
    z = torch.cat(z, -1).transpose(0, 1)[None]  # (1, S, N, K)
    model = factorised_model(parts, sigma)
    with torch.no_grad():
        lp = model.log_joint(z[0], x)[None]
    n = x.shape[0]
    return build_inference_data(
        z=z,
        log_weight=torch.full((1, num_draws, n), -math.log(num_draws), dtype=torch.float64),
        x=x,
        log_px=log_px,
        log_px_stderr=torch.zeros(n, dtype=torch.float64),
        mean=torch.cat(mean, -1),
        cov=torch.diag_embed(torch.stack(var, -1)),
        diagnostics={},
        attrs=provenance("exact", seed, {"num_draws": num_draws, "factorised": True}),
        lp=lp,
    )
