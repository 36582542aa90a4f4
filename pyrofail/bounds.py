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

**Bounded memory, draws independent of the chunk.** With a ``seed``, the draws are made in
fixed tiles of :data:`POINT_BLOCK` points by :data:`SAMPLE_BLOCK` draws, tile :math:`(b, j)`
from its own seed :func:`block_seed` ``(seed, b, j)``; a chunk is a run of whole tiles sized
from the memory budget (:mod:`pyrofail.memory`), so the budget changes how many tiles are
evaluated at once and never which draws a point gets: the results are the same for every
budget, to float rounding. Without a seed (training's validation, where the caller seeds the
global generator), the draws come from the global generator in chunks of at most ``2**20``
(draw, point) pairs, exactly as before the budget existed: training computes what it did. Its
memory is bounded by those ``2**20`` pairs, not by the budget, so evaluations pass a seed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from pyrofail import memory

__all__ = [
    "POINT_BLOCK",
    "SAMPLE_BLOCK",
    "Estimate",
    "block_seed",
    "elbo",
    "iwae",
    "log_weight_tiles",
    "log_weights",
]

POINT_BLOCK = 64  # points per random block
SAMPLE_BLOCK = 256  # draws per random block
_LEGACY_PAIRS = 2**20  # (draw, point) pairs per chunk of the unseeded path (its draws depend on it)


@dataclass
class Estimate:
    """A per-point estimate and its Monte Carlo standard error (same shape)."""

    value: torch.Tensor
    stderr: torch.Tensor

    def mean(self) -> tuple[float, float]:
        """Mean over the last (data) dimension and the Monte Carlo error of that mean."""
        n = self.value.shape[-1]
        return self.value.mean(-1), (self.stderr.pow(2).sum(-1)).sqrt() / n


def block_seed(seed: int, *index: int) -> int:
    """The seed of one random block: ``seed`` and the block's indices mixed by NumPy's
    ``SeedSequence`` (distinct indices give independent streams).

    Example:
        >>> block_seed(0, 3, 1) == block_seed(0, 3, 1) != block_seed(0, 1, 3)
        True
    """
    return int(
        np.random.SeedSequence([int(seed) % 2**63, *index]).generate_state(2, np.uint32).view(np.uint64)[0]
        >> 1
    )


@contextlib.contextmanager
def seeded(seed: int, device=None):
    """The global generators (CPU, and ``device``'s if it is a GPU) seeded with ``seed`` for the
    block, and restored after it."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def blockwise(fn, x: torch.Tensor, seed: int, size: int = POINT_BLOCK):
    """``fn(x_block)`` over blocks of ``size`` points (the point axis ``-2`` of ``x``), block
    ``b`` under the global generator seeded with ``block_seed(seed, b)``: a tensor, or a tuple
    of tensors, with the point axis last, written into outputs allocated at the first block.
    Memory is one block's; the draws do not depend on anything but ``seed`` and the block.

    Example:
        >>> x = torch.zeros(200, 1)
        >>> a = blockwise(lambda xb: torch.randn(xb.shape[0]), x, seed=0, size=64)
        >>> b = blockwise(lambda xb: torch.randn(xb.shape[0]), x[:100], seed=0, size=64)
        >>> a.shape, bool(torch.equal(a[:64], b[:64]))
        (torch.Size([200]), True)
    """
    n = x.shape[-2]
    outs, single = None, False
    for b, (lo, hi) in enumerate(memory.steps(n, size)):
        with seeded(block_seed(seed, b), x.device):
            got = fn(x[..., lo:hi, :])
        if outs is None:
            single = isinstance(got, torch.Tensor)
            got = (got,) if single else tuple(got)
            outs = [g.new_empty((*g.shape[:-1], n)) for g in got]
        elif single:
            got = (got,)
        for out, g in zip(outs, got):
            out[..., lo:hi] = g
    return outs[0] if single else tuple(outs)


def _sample_chunk(guide_dist, s):
    # rsample keeps the estimators usable inside autograd when asked; under no_grad it is
    # just a draw.
    return guide_dist.rsample((s,)) if guide_dist.has_rsample else guide_dist.sample((s,))


def log_weights(model, guide, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Importance log-weights ``(S, [R,] N)`` with ``z ~ guide.distribution(x)`` (global
    generator)."""
    q = guide.distribution(x)
    z = _sample_chunk(q, num_samples)
    return model.log_joint(z, x) - q.log_prob(z)


def _restarts(model) -> int:
    return int(getattr(model, "restarts", None) or 1)


def sample_blocks(num_samples: int):
    """``(start, stop)`` of the draw blocks: :data:`SAMPLE_BLOCK` draws each."""
    return [(s, min(num_samples, s + SAMPLE_BLOCK)) for s in range(0, num_samples, SAMPLE_BLOCK)]


def log_weight_tiles(model, guide, x: torch.Tensor, num_samples: int, *, seed: int, budget=None):
    """Importance log-weights streamed over chunks of whole tiles: yields ``(start, stop,
    log_w)`` with ``log_w`` ``(s, [R,] stop - start)``, the draws ``s`` of one draw block for
    points ``start:stop`` (every draw block of a chunk before the next chunk). Tile ``(b, j)``
    (points ``b * POINT_BLOCK ...``, draws of block ``j``) is drawn from
    ``block_seed(seed, b, j)``; the chunk's size comes from ``budget``."""
    n = x.shape[-2]
    blocks = sample_blocks(num_samples)
    widest = blocks[0][1] - blocks[0][0]
    per_point = memory.model_row_bytes(model, guide) * widest * _restarts(model)
    size = memory.rows(budget, per_point, multiple=POINT_BLOCK)
    for start, stop in memory.steps(n, size):
        xs = x[..., start:stop, :]
        for j, (s0, s1) in enumerate(blocks):
            zs, lqs = [], []
            for b0 in range(start, stop, POINT_BLOCK):
                with seeded(block_seed(seed, b0 // POINT_BLOCK, j), x.device):
                    q = guide.distribution(x[..., b0 : min(stop, b0 + POINT_BLOCK), :])
                    z = _sample_chunk(q, s1 - s0)
                zs.append(z)
                lqs.append(q.log_prob(z))
            z = torch.cat(zs, -2)
            yield start, stop, model.log_joint(z, xs) - torch.cat(lqs, -1)


def _legacy_chunks(model, guide, x, num_samples):
    """The unseeded path, as training's validation has always drawn: chunks of at most
    ``2**20`` (draw, point) pairs from the global generator (its draws depend on the chunks)."""
    n = x.shape[-2]
    per_chunk = max(1, min(num_samples, _LEGACY_PAIRS))
    for start, stop in memory.steps(n, max(1, min(n, _LEGACY_PAIRS // per_chunk))):
        xs = x[..., start:stop, :]
        for s0 in range(0, num_samples, per_chunk):
            yield start, stop, log_weights(model, guide, xs, min(per_chunk, num_samples - s0))


def _tiles(model, guide, x, num_samples, seed, budget):
    if seed is None:
        return _legacy_chunks(model, guide, x, num_samples)
    return log_weight_tiles(model, guide, x, num_samples, seed=seed, budget=budget)


def _outputs(model, x):
    shape = (*((model.restarts,) if getattr(model, "restarts", None) else ()), x.shape[-2])
    return torch.zeros(shape, dtype=torch.float64, device=x.device)


@torch.no_grad()
def elbo(
    model, guide, x: torch.Tensor, num_samples: int = 100, budget=None, seed: int | None = None
) -> Estimate:
    r"""Per-point ELBO :math:`\mathbb E_q[\log p(x, z) - \log q(z \mid x)]` with its MC error.

    :param budget: the worker's memory budget (:mod:`pyrofail.memory`; default 1 GiB).
    :param seed: draws by tiles from this seed, the same for every budget (module docstring);
        ``None`` draws from the global generator.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> from pyrofail.guides.mean_field import MeanFieldGuide
        >>> m = LinearGaussian(latent_dim=1, data_dim=1, weight=[[1.0]], noise_scale=1.0)
        >>> g, x = MeanFieldGuide(1, 1, hidden=(4,)), torch.zeros(300, 1)
        >>> a, b = elbo(m, g, x, 50, seed=0), elbo(m, g, x, 50, seed=0, budget="16MiB")
        >>> bool(torch.allclose(a.value, b.value))
        True
    """
    total, squares = _outputs(model, x), _outputs(model, x)
    for start, stop, lw in _tiles(model, guide, x, num_samples, seed, budget):
        lw = lw.double()
        total[..., start:stop] += lw.sum(0)
        squares[..., start:stop] += (lw * lw).sum(0)
    mean = total / num_samples
    if num_samples > 1:
        var = ((squares - num_samples * mean * mean) / (num_samples - 1)).clamp_min(0)
        err = (var / num_samples).sqrt()
    else:
        err = torch.zeros_like(mean)
    return Estimate(mean.to(x.dtype), err.to(x.dtype))


@torch.no_grad()
def iwae(
    model, guide, x: torch.Tensor, num_samples: int = 1000, budget=None, seed: int | None = None
) -> Estimate:
    r"""The IWAE bound :math:`\log \frac1S\sum_s w_s` per point, which estimates :math:`\log p(x)`.

    With ``num_samples`` equal to the IWAE particle count this is the IWAE bound; with
    thousands of samples from a guide that covers the posterior it estimates
    :math:`\log p(x)`. The standard error is the delta-method one,
    :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/S}`, computed in log space; it understates the
    error when the guide misses posterior mass (use the grid or NUTS reference then).
    ``budget`` and ``seed`` as for :func:`elbo`.
    """
    lse1 = torch.full_like(_outputs(model, x), -math.inf)
    lse2 = lse1.clone()
    for start, stop, lw in _tiles(model, guide, x, num_samples, seed, budget):
        lw = lw.double()
        part = (..., slice(start, stop))
        lse1[part] = torch.logaddexp(lse1[part], torch.logsumexp(lw, 0))
        lse2[part] = torch.logaddexp(lse2[part], torch.logsumexp(2 * lw, 0))
    log_mean = lse1 - math.log(num_samples)
    # relative variance of the weights: E[w^2] / E[w]^2 - 1
    rel = torch.expm1(lse2 - math.log(num_samples) - 2 * log_mean).clamp_min(0)
    return Estimate(log_mean.to(x.dtype), (rel / num_samples).sqrt().to(x.dtype))
