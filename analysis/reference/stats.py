r"""Convergence diagnostics of MCMC draws, as plain functions (after ``pyro.ops.stats``).

* :func:`rhat`: the rank-normalised split :math:`\hat R` of Vehtari, Gelman, Simpson,
  Carpenter & Bürkner (2021, "Rank-normalization, folding, and localization"), the larger of
  its bulk and tail (folded) values — ArviZ's ``rhat(method="rank")``;
* :func:`ess`: the bulk effective sample size of the same paper — ArviZ's
  ``ess(method="bulk")``;
* :func:`rhat_within`: the same :math:`\hat R` computed only over chosen draws of each chain
  (the draws in one posterior mode, say), which ArviZ has no way to ask for.

All take draws ``(..., chains, draws)`` and return one value per leading index.

Example:
    >>> import torch
    >>> from pyrofail.analysis import stats
    >>> v = torch.randn(3, 4, 200, generator=torch.Generator().manual_seed(0))
    >>> bool((stats.rhat(v) < 1.05).all()), stats.ess(v).shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyrofail.analysis.reference.idata import arviz

__all__ = ["ess", "rhat", "rhat_within"]


def _arviz(fn_name: str, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """ArviZ's diagnostic ``fn_name`` of draws ``(..., chains, draws)``, one per leading index."""
    az = arviz()
    lead, (c, s) = v.shape[:-2], v.shape[-2:]
    flat = v.detach().double().cpu().reshape(-1, c, s).permute(1, 2, 0).numpy()  # (C, S, M)
    out = getattr(az, fn_name)(az.convert_to_dataset(flat), **kwargs)["x"].values
    return torch.from_numpy(np.asarray(out, dtype=np.float64).reshape(lead)).to(v.device)


def rhat(v: torch.Tensor) -> torch.Tensor:
    r"""Rank-normalised split :math:`\hat R` over all chains (ArviZ, ``method="rank"``)."""
    return _arviz("rhat", v, method="rank")


def ess(v: torch.Tensor) -> torch.Tensor:
    """Bulk effective sample size (ArviZ, ``method="bulk"``)."""
    return _arviz("ess", v, method="bulk")


def _split(mask: torch.Tensor) -> torch.Tensor:
    """Split each chain's kept draws ``mask`` ``(..., C, S)`` into first and last halves (the
    middle draw of an odd count dropped, as ArviZ does): masks ``(..., 2C, S)``."""
    pos = mask.long().cumsum(-1) - 1
    count = mask.sum(-1, keepdim=True)
    half = count // 2
    first = mask & (pos < half)
    last = mask & (pos >= count - half)
    return torch.cat([first, last], -2)


def _z_scale(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rank-normalise ``v`` ``(..., C, S)`` over its kept draws ``mask`` (average ranks of ties,
    as ``scipy.stats.rankdata``; Blom's offset 3/8, as ArviZ)."""
    shape = v.shape
    flat = torch.where(mask, v, torch.full_like(v, math.inf)).flatten(-2)
    order = flat.argsort(dim=-1, stable=True)
    sv = flat.gather(-1, order)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[..., 1:] = sv[..., 1:] != sv[..., :-1]
    gid = new.long().cumsum(-1) - 1
    pos = torch.arange(1, sv.shape[-1] + 1, dtype=v.dtype).expand_as(sv)
    gsum = torch.zeros_like(sv).scatter_add_(-1, gid, pos)
    gcnt = torch.zeros_like(sv).scatter_add_(-1, gid, torch.ones_like(sv))
    rank = torch.empty_like(sv).scatter_(-1, order, (gsum / gcnt.clamp_min(1)).gather(-1, gid))
    size = mask.flatten(-2).sum(-1, keepdim=True).to(v.dtype)
    c = 3.0 / 8.0
    p = ((rank - c) / (size - 2 * c + 1)).clamp(1e-12, 1 - 1e-12)
    return torch.special.ndtri(p).reshape(shape)


def _rhat_of(v: torch.Tensor, mask: torch.Tensor, min_draws: int) -> torch.Tensor:
    r""":math:`\sqrt{(B/W + n - 1)/n}` over the chains of ``v`` ``(..., C, S)`` with at least
    ``min_draws`` kept draws; ``n`` their mean length."""
    w = mask.to(v.dtype)
    cnt = w.sum(-1)
    ok = cnt >= max(2, min_draws)
    mean = (v * w).sum(-1) / cnt.clamp_min(1)
    var = ((v - mean[..., None]).pow(2) * w).sum(-1) / (cnt - 1).clamp_min(1)
    m = ok.sum(-1).to(v.dtype)
    okw = ok.to(v.dtype)
    n = (cnt * okw).sum(-1) / m
    grand = (mean * okw).sum(-1) / m
    between = n * ((mean - grand[..., None]).pow(2) * okw).sum(-1) / (m - 1)
    within = (var * okw).sum(-1) / m
    out = torch.sqrt((between / within + n - 1) / n)
    return torch.where(m >= 2, out, torch.full_like(out, math.nan))


def rhat_within(v: torch.Tensor, mask: torch.Tensor, min_draws: int = 4) -> torch.Tensor:
    r"""Rank-normalised split :math:`\hat R` of draws ``(..., chains, draws)`` over the draws
    where ``mask`` is true (the same statistic as :func:`rhat` on those draws): each chain's kept
    draws are split in halves, and halves with fewer than ``min_draws`` kept draws are left out."""
    v = v.double()
    sm = _split(mask)
    sv = torch.cat([v, v], -2)
    bulk = _rhat_of(_z_scale(sv, sm), sm, min_draws)
    med = torch.where(sm, sv, torch.full_like(sv, math.nan)).flatten(-2).nanquantile(0.5, dim=-1)
    tail = _rhat_of(_z_scale((sv - med[..., None, None]).abs(), sm), sm, min_draws)
    return torch.maximum(bulk, tail)
