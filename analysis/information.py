r"""Mutual information between the data and the code of an encoder, streamed in bounded memory.

* :func:`mutual_information`: :math:`I(x; z_i)` per latent dimension (Yacoby et al. report
  :math:`\operatorname{avg}_i I(x; z_i)`);
* :func:`total_mutual_information`: :math:`I(x; z)` of the whole code.

Both compare :math:`\log q(z \mid x_n)` at draws :math:`z \sim q(z \mid x_n)` with the log of
the aggregate posterior :math:`q(z) = \frac1N \sum_m q(z \mid x_m)` over the same :math:`N`
points (Hoffman & Johnson 2016, "ELBO surgery"): :math:`N \times N` work. **Memory.** Both
sides are streamed: the draws (rows) in chunks of whole blocks of :data:`POINT_BLOCK`
points sized from the memory budget (:mod:`pyrofail.memory`), the mixture's components
(columns) one block of :data:`POINT_BLOCK` points at a time, accumulated with ``logaddexp``;
each point's result is written into an output allocated once. What stays is per point and
small: the guide's parameters of every point (a Gaussian's location and scale, a mixture's
components; the kernel family keeps its ``kernel_samples`` draws per point, 64 K floats).
**Draws.** Block :math:`b` of points draws from ``block_seed(seed, b)``
(:func:`pyrofail.bounds.block_seed`), so the budget never changes the numbers; the sums over
columns always run block by block in the same order.
"""

from __future__ import annotations

import math

import torch

from pyrofail import memory
from pyrofail.bounds import POINT_BLOCK, block_seed, seeded

__all__ = ["marginals", "mutual_information", "total_mutual_information"]

# floats held per (draw, component, dimension) while a column block is evaluated: the
# difference, its square, the log density, the running maximum and the exponentials
_TEMPORARIES = 6


def _normal_marginals(q):
    """Per-dimension ``(loc, scale)`` ``(N, K)`` of a Gaussian guide distribution, or None."""
    base = q
    while hasattr(base, "base_dist") and type(base).__name__ == "Independent":
        base = base.base_dist
    if isinstance(base, torch.distributions.Normal):
        return base.loc, base.scale
    if isinstance(base, torch.distributions.MultivariateNormal):
        return base.loc, base.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    return None


def _normal_log_prob(v, loc, scale):
    return -0.5 * ((v - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)


class _GaussianMarginals:
    """Exact per-coordinate marginals of a Gaussian (diagonal or full) ``q`` of one block."""

    method = "exact (Gaussian marginals)"
    width = 1  # components per point

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale  # (n, K)
        self._inv, self._norm = scale.reciprocal(), -torch.log(scale) - 0.5 * math.log(2 * math.pi)

    def sample(self, s: int) -> torch.Tensor:
        eps = torch.randn(s, *self.loc.shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def own(self, z):  # log q(z_i | x_n) for samples z (S, n, K) of point n
        return _normal_log_prob(z, self.loc, self.scale)

    def every(self, v):  # log q(v_i | x_m) for flat samples v (B, K) against every m: (B, n, K)
        # in place on one temporary: this is the N x N part of the work
        t = v[:, None, :] - self.loc
        return t.mul_(self._inv).square_().mul_(-0.5).add_(self._norm)


class _MixtureMarginals(_GaussianMarginals):
    r"""Exact per-coordinate marginals of a mixture of diagonal Gaussians:
    :math:`q(z_i \mid x) = \sum_c \pi_c\, \mathcal N(z_i; \mu_{ci}, \sigma_{ci}^2)`."""

    method = "exact (mixture marginals)"

    def __init__(self, q):
        self.q = q
        self.locs, self.scales, self.log_w = q.locs, q.scales, q.log_weights  # (n,C,K), (n,C)
        self.width = self.log_w.shape[-1]

    def sample(self, s: int) -> torch.Tensor:
        return self.q.sample((s,))

    def own(self, z):  # (S, n, K)
        lp = _normal_log_prob(z.unsqueeze(-2), self.locs, self.scales)  # (S, n, C, K)
        return torch.logsumexp(lp + self.log_w[..., None], -2)

    def every(self, v):  # (B, K) -> (B, n, K)
        lp = _normal_log_prob(v[:, None, None, :], self.locs[None], self.scales[None])  # (B, n, C, K)
        return torch.logsumexp(lp + self.log_w[None, ..., None], -2)


class _ExactOneDimensional(_GaussianMarginals):
    """K = 1: the marginal is the distribution itself, evaluated with its own ``log_prob``."""

    method = "exact (K = 1 log_prob)"

    def __init__(self, q):
        self.q = q
        self.n = q.batch_shape[-1]

    def sample(self, s: int) -> torch.Tensor:
        return self.q.sample((s,))

    def own(self, z):
        return self.q.log_prob(z)[..., None]

    def every(self, v):
        return self.q.log_prob(v[:, None, :].expand(-1, self.n, -1))[..., None]


class _LeaveOneOutKDE(_GaussianMarginals):
    r"""Other families with :math:`K > 1`: each coordinate's marginal
    :math:`q(z_i \mid x_n)` by a Gaussian kernel estimate on ``T`` draws, evaluated at those
    draws leaving the draw itself out, with the bandwidth per point and coordinate that
    maximises the leave-one-out likelihood over a grid of multiples of a robust Silverman width
    (:math:`0.9 \min(\hat s, \mathrm{IQR}/1.34)\, T^{-1/5}`; Silverman 1986, sec. 3.4). The
    aggregate uses the same kernels (all ``T`` of every other point)."""

    method = "leave-one-out kernel estimate"
    FACTORS = (0.25, 0.5, 1.0, 2.0)

    def __init__(self, q, t: int):
        self.draws = q.sample((t,))  # (T, n, K)
        self.width = t
        d = self.draws
        sd = d.std(0)
        iqr = d.quantile(0.75, 0) - d.quantile(0.25, 0)
        base = 0.9 * torch.minimum(sd, iqr / 1.34).clamp_min(1e-6) * t ** (-0.2)  # (n, K)
        best, best_ll = base, None
        for f in self.FACTORS:
            ll = self._loo(d, base * f).mean(0)  # (n, K)
            if best_ll is None:
                best, best_ll = base * f, ll
            else:
                better = ll > best_ll
                best, best_ll = torch.where(better, base * f, best), torch.where(better, ll, best_ll)
        self.bandwidth = best

    @staticmethod
    def _loo(d, width):
        t = d.shape[0]
        lp = _normal_log_prob(d[:, None], d[None], width)  # (T, T, n, K)
        eye = torch.eye(t, dtype=torch.bool, device=d.device)[..., None, None]
        lp = lp.masked_fill(eye, -math.inf)
        return torch.logsumexp(lp, 1) - math.log(t - 1)

    def sample(self, s: int) -> torch.Tensor:
        return self.draws[:s]

    def own(self, z):  # z are the first S draws: leave each out of its own estimate
        s = z.shape[0]
        lp = _normal_log_prob(z[:, None], self.draws[None], self.bandwidth)  # (S, T, n, K)
        eye = torch.eye(s, self.draws.shape[0], dtype=torch.bool, device=z.device)[..., None, None]
        lp = lp.masked_fill(eye, -math.inf)
        return torch.logsumexp(lp, 1) - math.log(self.draws.shape[0] - 1)

    def every(self, v):  # (B, K) -> (B, n, K), all T kernels of every point
        lp = _normal_log_prob(
            v[:, None, None, :], self.draws[None], self.bandwidth[None, None]
        )  # (B, T, n, K)
        return torch.logsumexp(lp, 1) - math.log(self.draws.shape[0])


def marginals(q, kernel_samples: int = 64):
    """The per-coordinate marginals of a guide distribution ``q`` (batch ``(N,)``), exact where
    the family allows it (Gaussian, mixture of diagonal Gaussians, any family at K = 1)."""
    normal = _normal_marginals(q)
    if normal is not None:
        return _GaussianMarginals(*normal)
    if all(hasattr(q, a) for a in ("locs", "scales", "log_weights")):
        return _MixtureMarginals(q)
    if q.event_shape[-1] == 1:
        return _ExactOneDimensional(q)
    return _LeaveOneOutKDE(q, kernel_samples)


def _blocks(n: int):
    return [(b, min(n, b + POINT_BLOCK)) for b in range(0, n, POINT_BLOCK)]


def _row_points(budget, per_point_bytes: int) -> int:
    """Points per row chunk (a multiple of POINT_BLOCK) when each costs ``per_point_bytes``."""
    return memory.rows(budget, per_point_bytes, multiple=POINT_BLOCK)


def _aggregate(columns, v, every) -> torch.Tensor:
    """:math:`\\log \\sum_m` over the column blocks of ``every(block, v)``, block by block."""
    acc = None
    for block in columns:
        part = torch.logsumexp(every(block, v), 1)
        acc = part if acc is None else torch.logaddexp(acc, part)
    return acc


@torch.no_grad()
def mutual_information(
    guide,
    x,
    num_samples: int = 10,
    seed: int = 0,
    kernel_samples: int = 64,
    budget=None,
    per_point: bool = False,
) -> torch.Tensor:
    r"""Encoder-side mutual information per latent dimension, :math:`I(x; z_i)` ``(K,)``.

    .. math::

        I(x; z_i) = \mathbb E_{x}\, \mathbb E_{q(z_i \mid x)}
            \big[\log q(z_i \mid x) - \log q(z_i)\big], \qquad
        q(z_i) = \frac1N \sum_{m=1}^N q(z_i \mid x_m),

    with :math:`x` the given points (the empirical data distribution) and ``num_samples``
    draws of :math:`z_i` per point; the aggregate posterior :math:`q(z_i)` is the exact
    mixture over the same points (Hoffman & Johnson 2016, "ELBO surgery"), so the estimate is
    at most :math:`\log N`. The marginals :math:`q(z_i \mid x)` are exact for Gaussian and
    mixture-of-Gaussian guides and for any guide at :math:`K = 1`; otherwise a leave-one-out
    kernel estimate from ``kernel_samples`` draws per point (:func:`marginals`). Yacoby et al.
    report :math:`\operatorname{avg}_i I(x; z_i)`. Memory and draws: module docstring.

    :param budget: the worker's memory budget (:mod:`pyrofail.memory`; default 1 GiB).
    :param per_point: return the contribution of every point ``(N, K)`` (their mean is the
        estimate), for standard errors and paired comparisons.

    Example:
        >>> import pyro.distributions as dist, torch
        >>> class Channel:  # q(z | x) = N(x, 0.1^2): I(x; z) = 0.5 log(1 + 1 / 0.01) for x ~ N(0, 1)
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 0.1).to_event(1)
        >>> x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0))
        >>> round(float(mutual_information(Channel(), x, num_samples=20)[0]), 1)
        2.3
    """
    n = x.shape[-2]
    blocks = _blocks(n)
    fams = []
    for b, (lo, hi) in enumerate(blocks):
        with seeded(block_seed(seed, b, 1), x.device):
            fams.append(marginals(guide.distribution(x[lo:hi]), kernel_samples))
    k = guide.distribution(x[:1]).event_shape[-1]
    width = fams[0].width
    out = torch.empty(n, k, dtype=x.dtype, device=x.device)
    # a row point holds S draws against a column block of POINT_BLOCK points and their components
    row_bytes = num_samples * POINT_BLOCK * width * k * _TEMPORARIES * x.element_size()
    size = _row_points(budget, row_bytes)
    for lo, hi in memory.steps(n, size):
        first, last = lo // POINT_BLOCK, (hi - 1) // POINT_BLOCK + 1
        z, log_cond = [], []
        for b in range(first, last):
            with seeded(block_seed(seed, b, 0), x.device):
                zb = fams[b].sample(num_samples)  # (S, n_b, K)
            z.append(zb)
            log_cond.append(fams[b].own(zb))
        z, log_cond = torch.cat(z, 1), torch.cat(log_cond, 1)
        s = z.shape[0]
        log_agg = _aggregate(fams, z.reshape(-1, k), lambda fam, v: fam.every(v))
        log_agg = log_agg.reshape(s, hi - lo, k) - math.log(n)
        out[lo:hi] = (log_cond - log_agg).mean(0)
    return out if per_point else out.mean(0)


@torch.no_grad()
def total_mutual_information(guide, x, num_samples: int = 4, seed: int = 0, budget=None) -> dict:
    r"""The encoder's mutual information with the whole code,
    :math:`I(x; z) = \mathbb E_x \mathbb E_{q(z \mid x)}[\log q(z \mid x) - \log q(z)]`,
    :math:`q(z) = \frac1N \sum_m q(z \mid x_m)` (the aggregate over the given points, so at
    most :math:`\log N`), with every density the guide's own ``log_prob``. Returns
    ``{"mean", "stderr"}`` (the standard error over points). Memory and draws: module
    docstring.

    Example:
        >>> import pyro.distributions as dist, torch
        >>> class Channel:  # q(z | x) = N(x, 0.1^2 I_2), x ~ N(0, I_2): I = log(1 + 100) = 4.62
        ...     def distribution(self, x):
        ...         return dist.Normal(x, 0.1).to_event(1)
        >>> x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0))
        >>> mi = total_mutual_information(Channel(), x, num_samples=8)  # 4.55: the aggregate of 3000
        >>> abs(mi["mean"] - math.log(101)) < 0.1  # points is not quite N(0, 1.01 I)
        True
    """
    n = x.shape[-2]
    blocks = _blocks(n)
    dists = [guide.distribution(x[lo:hi]) for lo, hi in blocks]
    k = dists[0].event_shape[-1]
    values = torch.empty(n, dtype=torch.float64, device=x.device)
    size = _row_points(budget, num_samples * POINT_BLOCK * k * _TEMPORARIES * x.element_size())

    def every(q, v):  # (B, K) -> (B, n_b)
        return q.log_prob(v[:, None, :].expand(-1, q.batch_shape[-1], -1))

    for lo, hi in memory.steps(n, size):
        z, own = [], []
        for b in range(lo // POINT_BLOCK, (hi - 1) // POINT_BLOCK + 1):
            with seeded(block_seed(seed, b, 0), x.device):
                zb = dists[b].sample((num_samples,))  # (S, n_b, K)
            z.append(zb)
            own.append(dists[b].log_prob(zb))
        z, own = torch.cat(z, 1), torch.cat(own, 1)
        agg = _aggregate(dists, z.reshape(-1, k), every).reshape(num_samples, hi - lo) - math.log(n)
        values[lo:hi] = (own - agg).mean(0).double()
    return {"mean": float(values.mean()), "stderr": float(values.std() / math.sqrt(n))}
