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
    >>> from pyrofail.analysis.reference import stats
    >>> v = torch.randn(3, 4, 200, generator=torch.Generator().manual_seed(0))
    >>> bool((stats.rhat(v) < 1.05).all()), stats.ess(v).shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pyrofail.analysis.reference.idata import arviz

__all__ = ["ess", "mode_diagnostics", "rhat", "rhat_within"]


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


def mode_diagnostics(z: torch.Tensor, lab: torch.Tensor, mode_mass: torch.Tensor):
    r"""Per point, for draws ``z`` ``(C, S, N, K)`` in modes ``lab`` ``(N, CS)`` (chains
    concatenated) of masses ``mode_mass`` ``(N, G)``: ``(rhat, rhat_within_modes, ess)``, each
    ``(N,)``.

    * ``rhat``: :func:`rhat` over all chains, largest over latents;
    * ``rhat_within_modes``: :func:`rhat_within` over each mode's draws in the chains that spend
      at least ``max(10, S / 10)`` draws in it, largest over modes and latents (NaN when no mode
      has such a chain);
    * ``ess``: :math:`1 / \sum_m \bar P_m^2 / \mathrm{ESS}_m`, :math:`\bar P_m` the modes'
      normalised masses and :math:`\mathrm{ESS}_m` the sum over chains of their bulk ESS (of the
      draws less their mode's mean, so that jumps between modes do not count) times the
      fraction of their draws in mode ``m``: the effective sample size of the weighted draws.
    """
    c, s, n, k = z.shape
    n_modes = mode_mass.shape[1]
    pooled = z.permute(2, 0, 1, 3).reshape(n, c * s, k).double()
    zc = z.permute(2, 3, 0, 1).double()  # (N, K, C, S)
    lab_c = lab.reshape(n, c, s)
    within = torch.full((n,), -math.inf, dtype=torch.float64)
    min_draws = max(10, s // 10)
    frac = torch.zeros(n, c, n_modes, dtype=torch.float64)
    for g in range(n_modes):
        mask = lab_c == g  # (N, C, S)
        frac[:, :, g] = mask.double().mean(-1)
        has = (mask.sum(-1) >= min_draws).any(-1)
        if bool(has.any()):
            rg = rhat_within(zc[has], mask[has][:, None].expand(-1, k, -1, -1), min_draws // 2).amax(-1)
            within[has] = torch.fmax(within[has], rg)
    within = torch.where(torch.isfinite(within), within, math.nan)  # no mode with enough draws
    count = torch.zeros(n, n_modes, dtype=torch.float64).scatter_add_(
        1, lab, torch.ones_like(lab, dtype=torch.float64)
    )
    centre = (
        torch.zeros(n, n_modes, k, dtype=torch.float64).index_put_(
            (torch.arange(n)[:, None].expand_as(lab), lab), pooled, accumulate=True
        )
        / count.clamp_min(1)[..., None]
    )
    centred = (pooled - centre.gather(1, lab[..., None].expand(-1, -1, k))).reshape(n, c, s, k)
    chain_ess = ess(centred.permute(0, 3, 1, 2)[..., None, :]).amin(1)  # (N, C): each chain alone
    mode_ess = (frac * chain_ess[..., None]).sum(1)  # (N, G)
    represented = mode_mass.clamp_min(1e-300)
    share = represented / represented.sum(-1, keepdim=True)  # the draws' weights per mode
    point_ess = 1.0 / (share.pow(2) / mode_ess.clamp_min(1e-12)).sum(-1)
    return rhat(zc).amax(-1), within, point_ess
