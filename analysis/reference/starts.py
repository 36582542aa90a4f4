r"""Where chains start: at the local maxima of :math:`\log p(x, z)`, by Laplace mass.

:func:`starting_points` gives the first chains of every point: one at every maximum of
non-negligible mass, the rest shared by mass (D'Hondt's rule), so that a broad heavy mode below
a narrow peak gets a chain. :func:`top_up_points` gives the further chains of a top-up round, at
the maxima that no chain's draws cover. Both take the maxima of
:func:`pyrofail.analysis.reference.maxima.find_maxima`.
"""

from __future__ import annotations

import math

import torch

from pyrofail.analysis.reference.maxima import Maxima

__all__ = ["starting_points", "top_up_points"]


def starting_points(
    maxima: Maxima, num_chains: int, max_chains: int, *, min_share: float = 0.005, seed: int = 0
) -> torch.Tensor:
    """Chain starts ``(C, N, K)`` by Laplace mass: one chain at every maximum whose share of
    the mass is at least ``min_share`` (heaviest first), the remaining chains shared among them
    in proportion to mass (D'Hondt's rule). ``C`` is the same for every point: at least
    ``num_chains``, at most ``max_chains``, and otherwise the largest number of maxima of
    non-negligible mass any point has. The first chain at a maximum starts on it; further ones
    at a draw of its Laplace approximation, so that chains in one mode start dispersed.

    Example:
        >>> import torch
        >>> m = Maxima(torch.tensor([[[0.0], [3.0]]]), torch.zeros(1, 2), torch.tensor([[0.0, -1.0]]),
        ...            torch.ones(1, 2, 1, 1), torch.ones(1, 2, dtype=torch.bool))
        >>> starting_points(m, 2, 8)[:, 0, 0].tolist()
        [0.0, 3.0]
    """
    n, j, k = maxima.z.shape
    share = maxima.shares()
    big = maxima.valid & (share >= min_share)
    big[:, 0] |= maxima.valid[:, 0]  # the best maximum always counts
    c = min(max(num_chains, int(big.sum(-1).max())), max_chains)
    gen = torch.Generator().manual_seed(int(seed) + 11)
    count = torch.zeros(n, j, dtype=share.dtype, device=share.device)
    rows = torch.arange(n, device=share.device)
    out = []
    for _ in range(c):
        # unvisited maxima of non-negligible mass first (by mass), then D'Hondt quotients
        prio = torch.where(count == 0, 2.0 + share, share / (count + 1)).masked_fill(~big, -math.inf)
        pick = prio.argmax(-1)
        jitter = count[rows, pick] > 0
        eps = torch.randn(n, k, generator=gen, dtype=maxima.z.dtype).to(maxima.z.device)  # CPU stream
        shift = (maxima.tril[rows, pick] @ eps[..., None])[..., 0]
        out.append(maxima.z[rows, pick] + jitter[:, None] * shift)
        count[rows, pick] += 1
    return torch.stack(out)


def top_up_points(maxima: Maxima, uncovered: torch.Tensor, max_chains: int, *, min_share: float = 0.005):
    """Starts ``(C, N, K)`` for chains at the maxima that no chain's draws cover (``uncovered``
    ``(N, J)``), heaviest first, for every point with one of at least ``min_share`` of the
    Laplace mass; ``C`` is the most any point needs, at most ``max_chains`` (``None`` when no
    point needs one). A point's spare chains start at its heaviest maxima, where extra draws do no
    harm.

    Example:
        >>> import torch
        >>> m = Maxima(torch.tensor([[[0.0], [3.0]]]), torch.zeros(1, 2), torch.tensor([[0.0, -1.0]]),
        ...            torch.ones(1, 2, 1, 1), torch.ones(1, 2, dtype=torch.bool))
        >>> top_up_points(m, torch.tensor([[False, True]]), 4)[:, 0, 0].tolist()
        [3.0]
    """
    share = maxima.shares()
    j = min(maxima.z.shape[1], uncovered.shape[1])
    need = (uncovered[:, :j] & maxima.valid[:, :j] & (share[:, :j] >= min_share)).clone()
    c = min(int(need.sum(-1).max()) if need.numel() else 0, max_chains)
    if c == 0:
        return None
    # per point: the uncovered maxima by mass, then the heaviest maxima again and again
    by_mass = share[:, :j].masked_fill(~maxima.valid[:, :j], -1.0)
    first = torch.where(need, 2.0 + by_mass, by_mass).argsort(-1, descending=True)
    heaviest = by_mass.argsort(-1, descending=True)
    count = need.sum(-1, keepdim=True)
    slot = torch.arange(c)[None].expand(maxima.z.shape[0], c)
    cycle = (slot - count).clamp_min(0) % maxima.valid[:, :j].sum(-1, keepdim=True).clamp_min(1)
    pick = torch.where(
        slot < count, first.gather(1, slot.clamp_max(j - 1)), heaviest.gather(1, cycle)
    )  # (N, C)
    rows = torch.arange(maxima.z.shape[0])[:, None]
    return maxima.z[rows, pick].transpose(0, 1).contiguous()
