r"""Modes of a posterior from (weighted) draws, and the mass each distribution puts on them.

Modes are the basins of attraction of a kernel density estimate of the draws, found by mean
shift (Fukunaga & Hostetler 1975; Comaniciu & Meer 2002): every draw climbs to its density
peak, peaks closer than the bandwidth are one, and two peaks are also one when the density on
the segment between them never falls below ``dip`` times the lower peak (no valley, no second
mode). The bandwidth is the median distance from a draw to its ``k``-th nearest neighbour, so
it follows the width of the modes rather than the distance between them. Modes lighter than
``min_mass`` join the nearest heavier one.

Mode masses of a second distribution (a guide, another reference) are found by giving each of
its draws the label of the nearest reference draw.
"""

from __future__ import annotations

import torch


def _kde(points: torch.Tensor, centres: torch.Tensor, w: torch.Tensor, h: float) -> torch.Tensor:
    d2 = torch.cdist(points, centres).pow(2)
    return (torch.exp(-0.5 * d2 / h**2) * w).sum(-1)


def _merge(labels: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return torch.where(labels == b, torch.full_like(labels, a), labels)


@torch.no_grad()
def find_modes(
    draws: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    *,
    max_draws: int = 400,
    k: int | None = None,
    dip: float = 0.5,
    min_mass: float = 0.02,
    iterations: int = 50,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mode labels of one point's posterior draws.

    :param draws: ``(S, K)`` draws; ``log_weights`` ``(S,)`` their (unnormalised) log weights.
    :returns: ``(centres, labels)``: ``centres`` ``(M, K)`` are draws that represent the modes
        (a weighted resample of at most ``max_draws``), ``labels`` ``(M,)`` their mode index
        ``0..n_modes-1`` by decreasing mass. :func:`mode_masses` gives masses.
    """
    s = draws.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if log_weights is None:
        log_weights = torch.zeros(s, dtype=torch.float64, device=draws.device)
    probs = torch.softmax(log_weights.double(), 0)
    if s > max_draws:
        # resample by weight, so that the sub-sample carries the mass with equal weights
        idx = torch.multinomial(probs.float().cpu(), max_draws, replacement=True, generator=gen)
        pts = draws[idx.to(draws.device)].double()
        w = torch.full((max_draws,), 1.0 / max_draws, dtype=torch.float64, device=draws.device)
    else:
        keep = probs > 0
        pts, w = draws[keep].double(), probs[keep] / probs[keep].sum()
    m = pts.shape[0]
    if m <= 2:
        return pts.to(draws.dtype), torch.zeros(m, dtype=torch.long, device=pts.device)
    dist = torch.cdist(pts, pts)
    kk = min(m - 1, k or max(5, m // 20))
    h = float(dist.topk(kk + 1, largest=False).values[:, -1].median().clamp_min(1e-9))
    y = pts.clone()
    for _ in range(iterations):
        kern = torch.exp(-0.5 * torch.cdist(y, pts).pow(2) / h**2) * w
        new = kern @ pts / kern.sum(-1, keepdim=True).clamp_min(1e-300)
        done = (new - y).norm(dim=-1).max() < 1e-4 * h
        y = new
        if done:
            break
    # peaks: converged points within one bandwidth are the same peak
    labels = torch.full((m,), -1, dtype=torch.long, device=pts.device)
    peaks = []
    for i in range(m):
        if labels[i] >= 0:
            continue
        close = ((y - y[i]).norm(dim=-1) < h) & (labels < 0)
        labels[close] = len(peaks)
        peaks.append(y[close].mean(0))
    peaks = torch.stack(peaks)
    height = _kde(peaks, pts, w, h)
    # peaks with no valley between them are one mode
    t = torch.linspace(0, 1, 12, dtype=pts.dtype, device=pts.device)[1:-1, None]
    for a in range(len(peaks)):
        for b in range(a + 1, len(peaks)):
            if not ((labels == a).any() and (labels == b).any()):
                continue
            line = peaks[a] + t * (peaks[b] - peaks[a])
            if _kde(line, pts, w, h).min() >= dip * min(height[a], height[b]):
                labels = _merge(labels, a, b)
    labels = torch.unique(labels, return_inverse=True)[1]
    masses = torch.zeros(int(labels.max()) + 1, dtype=w.dtype, device=w.device).index_add_(0, labels, w)
    heavy = masses >= min_mass
    if heavy.any() and not heavy.all():
        heavy_draw = heavy[labels]
        nearest = dist[:, heavy_draw].argmin(-1)
        labels = torch.where(heavy_draw, labels, labels[heavy_draw][nearest])
        labels = torch.unique(labels, return_inverse=True)[1]
        masses = torch.zeros(int(labels.max()) + 1, dtype=w.dtype, device=w.device).index_add_(0, labels, w)
    order = torch.argsort(masses, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return pts.to(draws.dtype), rank[labels]


@torch.no_grad()
def assign(samples: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mode label of each row of ``samples`` ``(S, K)``: that of its nearest centre."""
    d = torch.cdist(samples.double(), centres.double())
    return labels[d.argmin(-1)]


def mode_masses(
    samples: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mass of ``samples`` (weighted by ``log_weights``) on each mode ``(n_modes,)``."""
    n_modes = int(labels.max()) + 1
    lab = assign(samples, centres, labels)
    if log_weights is None:
        w = torch.full(
            (samples.shape[0],), 1.0 / samples.shape[0], dtype=torch.float64, device=samples.device
        )
    else:
        w = torch.softmax(log_weights.double(), 0)
    return torch.zeros(n_modes, dtype=torch.float64, device=samples.device).index_add_(0, lab, w)
