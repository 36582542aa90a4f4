r"""The posterior predictive of a BNN+LV from weight draws, point by point.

Given draws :math:`W_s \sim q(W)` or :math:`p(W \mid \mathcal D)`, :math:`s = 1..S`, the
predictive density at a new input integrates the new point's latent over its *prior*, since
nothing is observed about it:

.. math::

    p(y \mid x, \mathcal D) = \int\!\!\int \mathcal N\big(y; f_W(x, z), \sigma^2\big)\,
        \mathcal N(z; 0, s_z^2)\, p(W \mid \mathcal D)\, dz\, dW
    \approx \frac{1}{SK} \sum_{s=1}^S \sum_{k=1}^K \mathcal N\big(y; f_{W_s}(x, z_{sk}), \sigma^2\big),
    \quad z_{sk} \sim \mathcal N(0, s_z^2),

computed as a log-mean-exp (Depeweg et al. 2018). The latents are *stratified* draws from
their prior: at each point the :math:`SK` draws take one from each of :math:`SK` strata of
equal probability, :math:`z = s_z\,\Phi^{-1}\big((j + u_j)/SK\big)`, :math:`u_j \sim U(0,1)`,
assigned to the weight draws in random order. Each draw is still marginally
:math:`\mathcal N(0, s_z^2)`, so the average is unbiased; unlike independent draws, the strata
always reach the prior's tails, where an output far from the predictive mean finds its density
(with plain Monte Carlo such a point's log density can be off by nats). The log of the
average still underestimates the log density by about half its squared relative error
(Jensen).

At a training point the latent *was* inferred, and the reconstruction density uses the joint
draws :math:`(W_s, z_{s,n})`:
:math:`\log \frac1S \sum_s \mathcal N(y_n; f_{W_s}(x_n, z_{s,n}), \sigma^2)`.
"""

from __future__ import annotations

import math

import torch

from pyrofail.bnn.network import BNNLV, LOG_2PI
from pyrofail.errors import check_positive_int

__all__ = ["log_likelihood_inferred", "predictive_draws", "predictive_summary"]

_BUDGET = 2**23  # floats per hidden-layer activation tensor in one chunk


def _chunk(network: BNNLV, draws: int) -> int:
    return max(1, _BUDGET // (draws * max(network.hidden, default=1)))


def _stratified_normal(k: int, m: int, g: torch.Generator, dtype) -> torch.Tensor:
    """``(k, m)``: per column, one N(0, 1) draw from each of ``k`` equal-probability strata, in
    random order."""
    order = torch.rand(k, m, generator=g, dtype=torch.float64).argsort(0)
    u = (order + torch.rand(k, m, generator=g, dtype=torch.float64)) / k
    return torch.special.ndtri(u.clamp(1e-300, 1 - 1e-16)).to(dtype)


@torch.no_grad()
def predictive_summary(
    network: BNNLV, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, num_z: int = 100, seed: int = 0
) -> dict[str, torch.Tensor]:
    r"""Per point ``(M,)``, with fresh latents :math:`z_{smk} \sim \mathcal N(0, s_z^2)`:

    * ``"log_lik"``: :math:`\log \frac{1}{SK}\sum_{s,k} \mathcal N(y_m; f_{W_s}(x_m, z_{smk}), \sigma^2)`;
    * ``"pit"``: the predictive CDF at the observation,
      :math:`\frac{1}{SK}\sum_{s,k}\Phi\big((y_m - f_{W_s}(x_m, z_{smk}))/\sigma\big)`; ``y_m`` lies in
      the central 90% predictive interval exactly when it is in :math:`[0.05, 0.95]`;
    * ``"mean"``: the predictive mean :math:`\frac{1}{SK}\sum_{s,k} f_{W_s}(x_m, z_{smk})`.

    ``w`` is ``(S, P)``, ``x`` ``(M, D)``, ``y`` ``(M,)``. The latents are stratified draws (see
    the module), chunk by chunk of test points from generators seeded by ``seed`` and the
    chunk's index, so the same call gives the same numbers.

    Example:
        >>> net = BNNLV(hidden=(4,), latent_scale=1e-6)
        >>> w = torch.zeros(1, net.num_weights)  # f = 0 everywhere: N(y; 0, 0.1^2)
        >>> out = predictive_summary(net, w, torch.zeros(1, 1), torch.zeros(1), num_z=3)
        >>> round(float(out["log_lik"]), 4), float(out["pit"]), float(out["mean"])
        (1.3836, 0.5, 0.0)
    """
    num_z = check_positive_int("num_z", num_z)
    s, m = w.shape[0], x.shape[0]
    sigma = network.noise_scale
    chunk = _chunk(network, s * num_z)
    out = {"log_lik": [], "pit": [], "mean": []}
    for c, start in enumerate(range(0, m, chunk)):
        xc, yc = x[start : start + chunk], y[start : start + chunk]
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + c)
        z = network.latent_scale * _stratified_normal(s * num_z, xc.shape[0], g, x.dtype).reshape(
            s, num_z, -1
        )
        f = network.mean(w[:, None, :], xc, z).reshape(s * num_z, -1)  # (S K, chunk)
        resid = (yc - f) / sigma
        log_dens = -0.5 * resid**2 - math.log(sigma) - 0.5 * LOG_2PI
        out["log_lik"].append(torch.logsumexp(log_dens, 0) - math.log(s * num_z))
        out["pit"].append(torch.special.ndtr(resid).mean(0))
        out["mean"].append(f.mean(0))
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def log_likelihood_inferred(
    network: BNNLV, w: torch.Tensor, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    r"""Reconstruction density of training points with their inferred latents, ``(N,)``:
    :math:`\log \frac1S \sum_s \mathcal N\big(y_n; f_{W_s}(x_n, z_{s,n}), \sigma^2\big)` for joint
    draws ``w`` ``(S, P)`` and ``z`` ``(S, N)``.

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> w, z = torch.zeros(2, net.num_weights), torch.zeros(2, 1)
        >>> round(float(log_likelihood_inferred(net, w, z, torch.zeros(1, 1), torch.zeros(1))), 4)
        1.3836
    """
    s = w.shape[0]
    chunk = _chunk(network, s)
    parts = []
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        parts.append(torch.logsumexp(network.log_likelihood(w, z[:, sl], x[sl], y[sl]), 0) - math.log(s))
    return torch.cat(parts)


@torch.no_grad()
def predictive_draws(
    network: BNNLV, w: torch.Tensor, x: torch.Tensor, *, num_z: int = 10, seed: int = 0, noise: bool = True
) -> torch.Tensor:
    r"""Draws from the posterior predictive, ``(S K, M)``: :math:`y = f_{W_s}(x, z) + \sigma\varepsilon`
    with :math:`z \sim \mathcal N(0, s_z^2)` and :math:`\varepsilon \sim \mathcal N(0, 1)` (without
    :math:`\varepsilon` if ``noise=False``), ``num_z`` latents per weight draw.

    Example:
        >>> net = BNNLV(hidden=(2,))
        >>> predictive_draws(net, torch.zeros(3, net.num_weights), torch.zeros(5, 1), num_z=2).shape
        torch.Size([6, 5])
    """
    num_z = check_positive_int("num_z", num_z)
    g = torch.Generator().manual_seed(int(seed))
    s, m = w.shape[0], x.shape[0]
    z = network.latent_scale * torch.randn(s, num_z, m, generator=g, dtype=x.dtype)
    f = network.mean(w[:, None, :], x, z).reshape(s * num_z, m)
    if noise:
        f = f + network.noise_scale * torch.randn(f.shape, generator=g, dtype=f.dtype)
    return f
