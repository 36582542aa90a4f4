r""":math:`\log p_\theta(x)` by importance sampling from the guide, with the diagnostic that says when
to distrust it.

.. math::

    \widehat{\log p}(x) = \log \frac1S \sum_{s=1}^S w_s, \qquad
    w_s = \frac{p_\theta(x, z_s)}{q_\phi(z_s \mid x)}, \quad z_s \sim q_\phi(z \mid x),

with the delta-method standard error :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/S}` and, per
point, the Pareto shape :math:`\hat k` of the largest weights (PSIS, Vehtari et al. 2024,
through ArviZ). Where :math:`\hat k > 0.7` the weights' variance is effectively infinite: the
estimate can be nats off while its standard error looks small (a guide that misses posterior
mass), so such points are flagged and counted, never hidden. Exact quadrature
(:mod:`pyrofail.analysis.reference.grid`) replaces this wherever :math:`K \le 2`.

Example:
    >>> import torch
    >>> from pyrofail.models import LinearGaussian
    >>> truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0)
    >>> x = truth.sample(20, seed=1).x
    >>> class Exact:  # the exact posterior as the guide: every weight equals p(x)
    ...     def distribution(self, x):
    ...         return truth.posterior(x)
    >>> est = sampled_log_px(truth, Exact(), x, num_samples=200)
    >>> bool(torch.allclose(est.value, truth.marginal().log_prob(x).double(), atol=1e-4)), int(est.bad_points)
    (True, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["K_HAT_MAX", "ImportanceEstimate", "sampled_log_px"]

K_HAT_MAX = 0.7  # above it the importance weights' variance is effectively infinite


@dataclass
class ImportanceEstimate:
    """Per-point ``value`` (log p(x)), ``stderr`` (delta method), ``pareto_k`` and the draws
    per point; ``bad_points`` counts :math:`\\hat k >` :data:`K_HAT_MAX`."""

    value: torch.Tensor
    stderr: torch.Tensor
    pareto_k: torch.Tensor
    num_samples: int

    @property
    def bad_points(self) -> int:
        return int((self.pareto_k > K_HAT_MAX).sum())

    def mean_stderr(self) -> float:
        """The Monte Carlo error of the mean over the points."""
        return float(self.stderr.double().pow(2).sum().sqrt() / self.stderr.numel())


def _pareto_k(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS :math:`\\hat k` per row of ``log_w`` ``(N, S)``; :math:`-\\infty` for rows whose weights
    differ by less than 0.1% (no tail to fit: float rounding in ``log_joint`` is not one)."""
    import arviz as az
    import numpy as np

    lw = log_w.double().cpu().numpy()
    k = np.full(lw.shape[0], -np.inf)
    spread = lw.max(-1) - lw.min(-1)
    tailed = spread > 1e-3
    if tailed.any():
        k[tailed] = np.asarray(az.psislw(lw[tailed].copy())[1], dtype=np.float64)
    return torch.from_numpy(k)


@torch.no_grad()
def _block(model, guide, x: torch.Tensor, num_samples: int):
    q = guide.distribution(x)
    z = q.sample((num_samples,))
    lw = (model.log_joint(z, x) - q.log_prob(z)).double()  # (S, n)
    s = lw.shape[0]
    log_mean = torch.logsumexp(lw, 0) - math.log(s)
    rel = torch.expm1(torch.logsumexp(2 * lw, 0) - math.log(s) - 2 * log_mean).clamp_min(0)
    return log_mean, (rel / s).sqrt(), _pareto_k(lw.T)


def sampled_log_px(
    model,
    guide,
    x: torch.Tensor,
    num_samples: int = 5000,
    seed: int = 0,
    target_stderr: float | None = None,
    max_samples: int = 2**15,
    chunk_values: int = 2**21,
) -> ImportanceEstimate:
    """Importance-sampled :math:`\\log p(x)` per point with its error and :math:`\\hat k`.

    With ``target_stderr`` the draws double (fresh ones each time, all points) until the Monte
    Carlo error of the mean is below it or ``max_samples`` is reached; whether it was reached
    is for the caller to state. Points are taken ``chunk_values // num_samples`` at a time, so
    memory does not grow with ``N``; each block of 64 points draws from its own seed, so the
    numbers do not depend on the chunk size.
    """
    n = x.shape[0]
    while True:
        values, errors, ks = [], [], []
        block = 64
        per_chunk = max(block, (chunk_values // max(1, num_samples)) // block * block)
        for start in range(0, n, per_chunk):
            for b in range(start, min(n, start + per_chunk), block):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed * 1_000_003 + b)
                    v, e, k = _block(model, guide, x[b : b + block], num_samples)
                values.append(v)
                errors.append(e)
                ks.append(k)
        est = ImportanceEstimate(torch.cat(values), torch.cat(errors), torch.cat(ks), num_samples)
        if target_stderr is None or est.mean_stderr() <= target_stderr or num_samples * 2 > max_samples:
            return est
        num_samples *= 2
