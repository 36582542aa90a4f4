r"""Monte Carlo estimates of the ELBO, the IWAE bound and :math:`\log p(x)` per data point.

All three start from the importance log-weights

.. math::

    \log w_s(x) = \log p_\theta(x, z_s) - \log q_\phi(z_s \mid x), \qquad z_s \sim q_\phi(z \mid x),

so they use the model only through ``log_joint`` and the guide only through
``distribution(x)``, and work for batched (``R`` restarts) and ordinary objects alike:
results have shape ``(N,)`` or ``(R, N)``.

* ELBO: :math:`\frac1S \sum_s \log w_s` (Kingma & Welling 2014).
* IWAE bound: :math:`\log \frac1S \sum_s w_s` (Burda, Grosse & Salakhutdinov 2016).
* :math:`\log p(x)` by importance sampling: the same estimate with many samples; its standard
  error by the delta method, :math:`\widehat{\mathrm{sd}}(w) / (\sqrt S\, \bar w)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Estimate", "elbo", "iwae", "log_weights"]


@dataclass
class Estimate:
    """A per-point estimate and its Monte Carlo standard error (same shape)."""

    value: torch.Tensor
    stderr: torch.Tensor

    def mean(self) -> tuple[float, float]:
        """Mean over the last (data) dimension and the Monte Carlo error of that mean."""
        n = self.value.shape[-1]
        return self.value.mean(-1), (self.stderr.pow(2).sum(-1)).sqrt() / n


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def _sample_chunk(guide_dist, s):
    # rsample keeps the estimators usable inside autograd when asked; under no_grad it is
    # just a draw.
    return guide_dist.rsample((s,)) if guide_dist.has_rsample else guide_dist.sample((s,))


def log_weights(model, guide, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Importance log-weights ``(S, [R,] N)`` with ``z ~ guide.distribution(x)``."""
    q = guide.distribution(x)
    z = _sample_chunk(q, num_samples)
    return model.log_joint(z, x) - q.log_prob(z)


def _data_chunk(n_samples: int, n_points: int, budget: int) -> int:
    return max(1, min(n_points, budget // max(1, n_samples)))


@torch.no_grad()
def elbo(model, guide, x: torch.Tensor, num_samples: int = 100, budget: int = 2**20) -> Estimate:
    r"""Per-point ELBO :math:`\mathbb E_q[\log p(x, z) - \log q(z \mid x)]` with its MC error.

    ``budget`` bounds the number of (sample, point) pairs held at once.
    """
    n = x.shape[-2]
    values, errors = [], []
    for start, size in _chunks(n, _data_chunk(num_samples, n, budget)):
        lw = log_weights(model, guide, x[start : start + size], num_samples)
        values.append(lw.mean(0))
        errors.append(lw.std(0) / math.sqrt(num_samples) if num_samples > 1 else lw[0] * 0)
    return Estimate(torch.cat(values, -1), torch.cat(errors, -1))


@torch.no_grad()
def iwae(model, guide, x: torch.Tensor, num_samples: int = 1000, budget: int = 2**20) -> Estimate:
    r"""The IWAE bound :math:`\log \frac1S\sum_s w_s` per point, which estimates :math:`\log p(x)`.

    With ``num_samples`` equal to the IWAE particle count this is the IWAE bound; with
    thousands of samples from a guide that covers the posterior it estimates
    :math:`\log p(x)`. The standard error is the delta-method one,
    :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/S}`, computed in log space; it understates the
    error when the guide misses posterior mass (use the grid or NUTS reference then).
    """
    n = x.shape[-2]
    per_chunk = max(1, min(num_samples, budget))
    values, errors = [], []
    for start, size in _chunks(n, _data_chunk(per_chunk, n, budget)):
        xs = x[start : start + size]
        lse1 = lse2 = None
        for _, s in _chunks(num_samples, per_chunk):
            lw = log_weights(model, guide, xs, s)
            a, b = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
            lse1 = a if lse1 is None else torch.logaddexp(lse1, a)
            lse2 = b if lse2 is None else torch.logaddexp(lse2, b)
        log_mean = lse1 - math.log(num_samples)
        # relative variance of the weights: E[w^2] / E[w]^2 - 1
        rel = torch.expm1(lse2 - math.log(num_samples) - 2 * log_mean).clamp_min(0)
        values.append(log_mean)
        errors.append((rel / num_samples).sqrt())
    return Estimate(torch.cat(values, -1), torch.cat(errors, -1))
