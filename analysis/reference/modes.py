r"""Modes of a posterior from (weighted) draws, and the mass any distribution puts on each.

**Definition.** A mode is a basin of attraction of a kernel density estimate
:math:`\hat p(z) = \sum_j w_j \exp(-\lVert z - z_j\rVert^2 / 2h^2)` of the draws, kept only if
it is *persistent*: two basins are one mode when the highest pass between them is at least
``dip`` times the lower of their two peaks (no valley deeper than that, no second mode), and a
basin holding less than ``min_mass`` of the posterior joins the neighbour it is best connected
to. This is persistence-based clustering (ToMATo: Chazal, Guibas, Oudot & Skraba, "Persistence-
based clustering in Riemannian manifolds", J. ACM 2013) on a neighbourhood graph of the draws,
with the basins found by quick shift (Vedaldi & Soatto 2008; Koontz, Narendra & Fukunaga 1976):

1. ``M`` representatives are drawn from the weighted draws by systematic resampling, so they
   carry equal mass :math:`1/M` (all draws are kept when they are equally weighted and few);
2. the bandwidth :math:`h` is the median distance from a representative to its
   :math:`k`-th nearest neighbour (:math:`k = M / 10`), so it follows the width of the modes
   rather than the distance between them; :math:`\hat p` is evaluated at every representative;
3. every representative links to its nearest neighbour of higher density within
   :math:`\tau = 3h`; representatives without one are peaks, and following the links
   (pointer jumping) labels every representative with its peak: the basins;
4. the pass between basins :math:`A` and :math:`B` is
   :math:`\max \{\min(\hat p(z_i), \hat p(z_j)) : i \in A, j \in B, \lVert z_i - z_j\rVert \le \tau\}`;
   the pair with the largest ratio pass / lower peak merges while that ratio is at least
   ``dip`` (the merged basin keeps the higher peak and the better passes);
5. basins lighter than ``min_mass`` merge, lightest first, into the basin they have the highest
   pass to (the nearest one when they have no edge to any);
6. modes are numbered ``0, 1, ...`` by decreasing mass.

**With the density along the way** (``segment``, as the NUTS reference gives it): a kernel
bandwidth set by the ``k``-th neighbour spans the gap between clusters when every cluster is one
chain's draws in its own mode, and the valleys between them hold no draw, so a pass read off
the ends of an edge sees no valley. Then quick shift links a representative only to a higher
neighbour that no valley separates from it (the density at interior points of the edge stays
above ``dip`` times its own; the nearest ``LINK_TRIES`` are tried), passes are the least density
along the edges between basins, and step 5 is skipped: a basin that step 4 leaves is a valley
away from every other, a mode the draws visit little rather than a fluctuation of an estimate.

Every step is a tensor operation over a chunk of data points at once: ``(N, S, K)`` draws give
all ``N`` posteriors' modes without a Python loop over points or draws.

**Masses of another distribution.** The labelled representatives (``centres``) partition the
latent space by nearest neighbour: :func:`assign` gives a sample the label of its nearest
centre, and :func:`mode_masses` sums weights per label. Assigning a guide's draws to the
reference's modes measures how the guide shares its mass between the true modes; dropped modes
show as masses near zero.
"""

from __future__ import annotations

import math

import torch

from pyrofail.analysis.reference.idata import draws, log_density
from pyrofail.errors import UsageError

__all__ = ["assign", "find_modes", "mode_masses", "num_modes", "reference_mass_error", "reference_modes"]

MAX_DRAWS = 400
DIP = 0.5
MIN_MASS = 0.02
NEIGHBOURS = 0.1
REACH = 3.0  # tau = REACH * h
PILOT = 10  # neighbour rank of the pilot density
SEGMENT_POINTS = 3  # interior points at which an edge between basins is checked for a valley
SEGMENT_CHUNK = 2**14  # edges per call of the segment density
LINK_TRIES = 4  # higher neighbours tried per representative before it counts as a peak
EXACT = "donot_use_mm_for_euclid_dist"  # cdist by differences: exact for near points far from zero


def _as_batch(draws: torch.Tensor, log_weights):
    if draws.dim() not in (2, 3):
        raise UsageError(f"draws have shape {tuple(draws.shape)}; expected (S, K) or (N, S, K)")
    single = draws.dim() == 2
    z = draws.unsqueeze(0) if single else draws
    if log_weights is None:
        lw = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    else:
        lw = torch.as_tensor(log_weights, device=z.device).double()
        lw = lw.unsqueeze(0) if single else lw
        if lw.shape != z.shape[:2]:
            raise UsageError(f"log_weights have shape {tuple(lw.shape)}; expected {tuple(z.shape[:2])}")
    return z.double(), lw, single


def _representatives(lw: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor | None:
    """Indices ``(N, M)`` of ``M`` equally weighted representatives of weighted draws
    (systematic resampling), or ``None`` when the draws are equally weighted and at most ``M``."""
    n, s = lw.shape
    p = torch.softmax(lw, -1)
    if s <= m and bool((p.amax(-1) - p.amin(-1) <= 1e-12 * p.amax(-1)).all()):
        return None
    cum = p.cumsum(-1)
    cum = cum / cum[:, -1:]
    u = (torch.arange(m, dtype=lw.dtype) + torch.rand(n, 1, generator=gen, dtype=lw.dtype)) / m
    return torch.searchsorted(cum, u.to(lw.device)).clamp_max(s - 1)


def _root(parent: torch.Tensor) -> torch.Tensor:
    """Follow parent links to their roots by pointer jumping: ``log2(M)`` gathers."""
    for _ in range(max(1, math.ceil(math.log2(parent.shape[-1])) + 1)):
        nxt = parent.gather(-1, parent)
        if torch.equal(nxt, parent):
            break
        parent = nxt
    return parent


def _merge_pair(state: dict, a: torch.Tensor, b: torch.Tensor, active: torch.Tensor) -> None:
    """Merge basin ``b`` into basin ``a`` at the points where ``active`` (one pair per point)."""
    rows = active.nonzero().flatten()
    a, b = a[rows], b[rows]
    labels, passes, height = state["labels"], state["passes"], state["height"]
    labels[rows] = torch.where(labels[rows] == b[:, None], a[:, None], labels[rows])
    best = torch.maximum(passes[rows, a], passes[rows, b])
    passes[rows, a] = best
    passes[rows, :, a] = best
    passes[rows, b] = -math.inf
    passes[rows, :, b] = -math.inf
    passes[rows, a, a] = -math.inf
    b_higher = height[rows, b] > height[rows, a]
    state["peak"][rows, a] = torch.where(b_higher, state["peak"][rows, b], state["peak"][rows, a])
    height[rows, a] = torch.maximum(height[rows, a], height[rows, b])
    height[rows, b] = -math.inf
    state["mass"][rows, a] += state["mass"][rows, b]
    state["mass"][rows, b] = 0.0


@torch.no_grad()
def _segment_minima(y, nn_idx, cross, segment, rows) -> torch.Tensor:
    """The least of ``segment``'s log density at :data:`SEGMENT_POINTS` interior points of
    every edge where ``cross`` ``(n, M, L)``: ``(E,)``, in ``cross.nonzero()`` order."""
    pn, pm, pl = cross.nonzero(as_tuple=True)
    out = torch.empty(pn.shape[0], dtype=y.dtype, device=y.device)
    t = torch.arange(1, SEGMENT_POINTS + 1, dtype=y.dtype, device=y.device) / (SEGMENT_POINTS + 1)
    for start in range(0, pn.shape[0], SEGMENT_CHUNK):
        sl = slice(start, start + SEGMENT_CHUNK)
        a = y[pn[sl], pm[sl]]  # (E, K)
        b = y[pn[sl], nn_idx[pn[sl], pm[sl], pl[sl]]]
        seg = a[:, None] + t[:, None] * (b - a)[:, None]  # (E, T, K)
        out[sl] = segment(seg, rows[pn[sl]]).double().nan_to_num(nan=-math.inf).amin(-1)
    return out


def _uphill_links(y, dens, nn_idx, cand, segment, rows, dip: float) -> torch.Tensor:
    """Quick shift's links with the posterior's density along them: each representative links
    to its nearest higher neighbour that no valley separates from it (the density along the edge
    stays above ``dip`` times its own), trying the :data:`LINK_TRIES` nearest; none: a peak."""
    n, m, _ = cand.shape
    parent = torch.arange(m, device=y.device).expand(n, m).clone()
    cand = cand.clone()
    for _ in range(LINK_TRIES):
        has = cand.any(-1)
        if not bool(has.any()):
            break
        first = cand.float().argmax(-1)  # neighbours are sorted by distance
        pick = torch.zeros_like(cand).scatter_(-1, first[..., None], True) & has[..., None]
        low = _segment_minima(y, nn_idx, pick, segment, rows)
        pn, pm, _ = pick.nonzero(as_tuple=True)
        ok = low >= dens[pn, pm] + math.log(dip)
        parent[pn[ok], pm[ok]] = nn_idx[pn[ok], pm[ok], first[pn[ok], pm[ok]]]
        cand[pn[ok], pm[ok]] = False  # linked: done
        cand[pn[~ok], pm[~ok], first[pn[~ok], pm[~ok]]] = False  # a valley: try the next
    return parent


@torch.no_grad()
def _modes_chunk(
    y: torch.Tensor,
    log_density: torch.Tensor | None,
    dip: float,
    min_mass: float,
    neighbours: int | None,
    segment=None,
    rows_global: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels ``(n, M)`` (by decreasing mass) of equally weighted representatives ``y``, with
    the posterior's own log density at them when known (a kernel estimate otherwise), and
    ``segment`` (``find_modes``) to look for valleys along the edges between basins."""
    n, m, k_dim = y.shape
    if m < 3:
        return torch.zeros(n, m, dtype=torch.long, device=y.device)
    rows = torch.arange(n, device=y.device)
    # distances in double precision and by differences, not the matrix-product formula: draws of a
    # narrow mode far from zero differ in digits that single precision and |a|^2 + |b|^2 - 2ab lose
    y = y.double()
    dist = torch.cdist(y, y, compute_mode=EXACT)  # (n, M, M)
    kk = min(m - 1, neighbours or max(5, int(NEIGHBOURS * m)))
    nn_dist, nn_idx = dist.topk(min(m, 2 * kk + 1), dim=-1, largest=False)  # the graph (self first)
    tiny = 1e-9 * (1 + y.abs().amax((1, 2)))[:, None]  # guards against identical draws
    h0 = torch.maximum(nn_dist[..., kk], tiny).median(-1, keepdim=True).values  # (n, 1)
    # sample-point bandwidths by Abramson's square-root law, h_j = h0 (f(z_j) / g)^(-1/2),
    # with the pilot density f ~ r(z_j)^(-K) from the distance r to the PILOT-th neighbour
    # (few, so that a light but narrow mode is not mistaken for a sparse region) and g its
    # geometric mean: narrow kernels in dense modes, wide ones in sparse tails
    r_p = torch.maximum(nn_dist[..., min(PILOT, kk)], tiny).log()
    h = h0 * torch.exp(0.5 * k_dim * (r_p - r_p.mean(-1, keepdim=True))).clamp(0.25, 4.0)  # (n, M)
    d2 = dist.square_() if log_density is None else None
    if log_density is None:
        hj = h[:, None, :]
        dens = torch.logsumexp(d2.mul_(-0.5 / hj.square()).sub_(k_dim * hj.log()), -1)  # (n, M)
    else:
        dens = log_density.double()
    del dist, d2
    # the neighbourhood graph: the 2k nearest neighbours within reach
    h_nb = h.gather(1, nn_idx.reshape(n, -1)).reshape(nn_idx.shape)
    reach = nn_dist <= REACH * torch.minimum(h[:, :, None], h_nb)
    d_nb = dens.gather(1, nn_idx.reshape(n, -1)).reshape(nn_idx.shape)  # (n, M, L)
    idx = torch.arange(m, device=y.device)
    # quick shift: link to the nearest neighbour of higher density (ties by index)
    higher = (d_nb > dens[..., None]) | ((d_nb == dens[..., None]) & (nn_idx < idx[:, None]))
    if segment is None:
        first = (higher & reach).float().argmax(-1)  # neighbours are sorted by distance
        has = (higher & reach).any(-1)
        parent = torch.where(has, nn_idx.gather(-1, first[..., None])[..., 0], idx.expand(n, m))
    else:
        parent = _uphill_links(y, dens, nn_idx, higher & reach, segment, rows_global, dip)
    root = _root(parent)
    # compact basin ids 0..r-1 per point
    is_root = root == idx
    r = int(is_root.sum(-1).max())
    rid = (is_root.long().cumsum(-1) - 1).clamp_min(0)
    labels = rid.gather(-1, root)
    peak = torch.zeros(n, r, dtype=torch.long, device=y.device)  # representative at each peak
    root_rows, root_cols = is_root.nonzero(as_tuple=True)
    peak[root_rows, rid[root_rows, root_cols]] = root_cols
    height = torch.full((n, r), -math.inf, dtype=y.dtype, device=y.device)
    height.scatter_reduce_(1, labels, dens, "amax")
    mass = torch.zeros(n, r, dtype=y.dtype, device=y.device)
    mass.scatter_add_(1, labels, torch.full_like(dens, 1.0 / m))
    # passes between basins: the best min-density edge of the graph between them
    edge = torch.minimum(dens[..., None], d_nb).masked_fill(~reach, -math.inf)
    l_nb = labels.gather(1, nn_idx.reshape(n, -1)).reshape(nn_idx.shape)
    if segment is not None:
        # an edge between two basins can span a valley that no representative lies in (a chain
        # per mode leaves the valleys empty): its pass is the least density along it, not at its ends
        cross = reach & (l_nb != labels[..., None])
        if bool(cross.any()):
            low = _segment_minima(y, nn_idx, cross, segment, rows_global)
            edge[cross] = torch.minimum(edge[cross], low)
    pair = (labels[..., None] * r + l_nb).reshape(n, -1)
    passes = torch.full((n, r * r), -math.inf, dtype=y.dtype, device=y.device)
    passes = passes.scatter_reduce_(1, pair, edge.reshape(n, -1), "amax").reshape(n, r, r)
    passes = torch.maximum(passes, passes.transpose(1, 2))  # kNN graphs are not symmetric
    passes = passes.masked_fill(torch.eye(r, dtype=torch.bool, device=y.device), -math.inf)
    state = {"labels": labels, "passes": passes, "height": height, "mass": mass, "peak": peak}
    # 1. persistence: merge the least separated pair while its pass >= dip * lower peak
    for _ in range(r - 1):
        lower = torch.minimum(height[:, :, None], height[:, None, :])
        ratio = (passes - lower).nan_to_num(nan=-math.inf)  # log(pass / lower peak)
        top, arg = ratio.reshape(n, -1).max(-1)
        active = top >= math.log(dip)
        if not bool(active.any()):
            break
        i, j = arg // r, arg % r
        keep_i = height[rows, i] >= height[rows, j]
        _merge_pair(state, torch.where(keep_i, i, j), torch.where(keep_i, j, i), active)
    # 2. light basins join the basin they have the highest pass to (the nearest peak if none);
    # not when the density along the edges is known: a basin left after step 1 is then a valley
    # away from every other, a mode the draws visit little, not a fluctuation of the estimate
    for _ in range(0 if segment is not None else r - 1):
        alive = mass > 0
        light = alive & (mass < min_mass)
        active = light.any(-1) & (alive.sum(-1) > 1)
        if not bool(active.any()):
            break
        b = mass.masked_fill(~light, math.inf).argmin(-1)
        pb = passes[rows, b].masked_fill(~alive, -math.inf)
        peaks = y.gather(1, state["peak"][..., None].expand(-1, -1, y.shape[-1]))  # (n, r, K)
        d = (peaks - peaks[rows, b][:, None, :]).norm(dim=-1).masked_fill(~alive, math.inf)
        d[rows, b] = math.inf
        a = torch.where(torch.isfinite(pb).any(-1), pb.argmax(-1), d.argmin(-1))
        _merge_pair(state, a, b, active)
    # 3. number the modes by decreasing mass
    order = torch.argsort(mass, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(r, device=y.device).expand(n, r).clone())
    return rank.gather(1, labels)


@torch.no_grad()
def find_modes(
    draws: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    *,
    log_density: torch.Tensor | None = None,
    max_draws: int = MAX_DRAWS,
    k: int | None = None,
    dip: float = DIP,
    min_mass: float = MIN_MASS,
    segment=None,
    seed: int = 0,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The modes of one posterior (draws ``(S, K)``) or of ``N`` posteriors (``(N, S, K)``).

    :param log_weights: ``(S,)`` or ``(N, S)`` (unnormalised) log weights of the draws;
        equal weights when ``None``.
    :param log_density: ``(S,)`` or ``(N, S)``: the posterior's log density at the draws, up
        to a constant per posterior (``log p(x, z)``). Basins and passes are then those of the
        posterior itself; without it they are those of a kernel density estimate of the draws.
    :param max_draws: the number ``M`` of representatives per posterior.
    :param k: neighbour rank for the bandwidth (default ``M / 10``).
    :param dip: two basins are one mode unless the density between them falls below ``dip``
        times the lower peak.
    :param min_mass: basins lighter than this join a neighbour.
    :param segment: with ``log_density``, a callable ``(z, point) -> log density`` for
        ``z`` ``(E, T, K)`` and ``point`` ``(E,)`` the index of the posterior each row belongs to
        (``log p(x_point, z)`` up to the same constant), returning ``(E, T)``. The pass along a
        graph edge between two basins is then the least density at interior points of the edge,
        not only at its ends: draws of separate chains in separate modes leave the valley between
        them empty, and an edge spanning it would otherwise merge the modes.
    :returns: ``(centres, labels)``: ``centres`` ``([N,] M, K)`` are the representatives and
        ``labels`` ``([N,] M)`` their modes, numbered ``0..n_modes-1`` by decreasing mass. Pass
        them to :func:`assign` and :func:`mode_masses`.
    """
    if not 0 < dip <= 1:
        raise UsageError(f"dip={dip!r} is not allowed; expected a number in (0, 1]")
    if not 0 <= min_mass < 1:
        raise UsageError(f"min_mass={min_mass!r} is not allowed; expected a number in [0, 1)")
    if max_draws < 3:
        raise UsageError(f"max_draws={max_draws!r} is not allowed; expected an integer >= 3")
    z, lw, single = _as_batch(draws, log_weights)
    ld = None
    if log_density is not None:
        ld = torch.as_tensor(log_density, device=z.device).double()
        ld = ld.unsqueeze(0) if single else ld
        if ld.shape != z.shape[:2]:
            raise UsageError(f"log_density has shape {tuple(ld.shape)}; expected {tuple(z.shape[:2])}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = _representatives(lw, max_draws, gen)
    if idx is not None:
        z = z.gather(1, idx[..., None].expand(-1, -1, z.shape[-1]))
        ld = None if ld is None else ld.gather(1, idx)
    labels = torch.cat(
        [
            _modes_chunk(
                z[i : i + chunk],
                None if ld is None else ld[i : i + chunk],
                dip,
                min_mass,
                k,
                segment if ld is not None else None,
                torch.arange(i, min(i + chunk, z.shape[0]), device=z.device),
            )
            for i in range(0, z.shape[0], chunk)
        ]
    )
    y = z
    centres = y.to(draws.dtype)
    return (centres[0], labels[0]) if single else (centres, labels)


@torch.no_grad()
def assign(
    samples: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """Mode label of each sample, that of its nearest centre: ``(S, K) -> (S,)`` for one
    posterior, ``(N, S, K) -> (N, S)`` for ``N``."""
    single = samples.dim() == 2
    s = samples.unsqueeze(0) if single else samples
    c = centres.unsqueeze(0) if centres.dim() == 2 else centres
    lab = labels.unsqueeze(0) if labels.dim() == 1 else labels
    if s.shape[0] != c.shape[0] or s.shape[-1] != c.shape[-1]:
        raise UsageError(
            f"samples of shape {tuple(samples.shape)} do not match centres of shape {tuple(centres.shape)}"
        )
    out = []
    for i in range(0, s.shape[0], chunk):
        d = torch.cdist(s[i : i + chunk].double(), c[i : i + chunk].double(), compute_mode=EXACT)
        out.append(lab[i : i + chunk].gather(1, d.argmin(-1)))
    out = torch.cat(out)
    return out[0] if single else out


@torch.no_grad()
def mode_masses(
    samples: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mass of ``samples`` (weighted by ``log_weights``) on each mode of ``(centres, labels)``.

    ``(S, K)`` samples give ``(n_modes,)``; ``(N, S, K)`` give ``(N, n_modes_max)`` with zeros
    for the modes a point does not have.
    """
    single = samples.dim() == 2
    lab = assign(samples, centres, labels)
    lab = lab.unsqueeze(0) if single else lab
    n, s = lab.shape
    if log_weights is None:
        w = torch.full((n, s), 1.0 / s, dtype=torch.float64, device=samples.device)
    else:
        lw = torch.as_tensor(log_weights, device=samples.device).double()
        w = torch.softmax(lw.unsqueeze(0) if single else lw, -1)
    n_modes = int(labels.max()) + 1
    out = torch.zeros(n, n_modes, dtype=torch.float64, device=samples.device).scatter_add_(1, lab, w)
    return out[0] if single else out


def num_modes(labels: torch.Tensor) -> torch.Tensor:
    """Number of modes per posterior from ``labels`` ``([N,] M)``."""
    return labels.amax(-1) + 1


def reference_modes(ref, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres, labels)`` ``(N, M, K)``, ``(N, M)`` of every point's posterior in a reference
    (:func:`pyrofail.analysis.reference.reference_posterior`): :func:`find_modes` on its
    weighted draws, with the posterior's own density at them when the reference stores it."""
    z, lw = draws(ref)
    return find_modes(z, lw, log_density=log_density(ref), **options)


def reference_mass_error(ref, against) -> tuple[torch.Tensor, torch.Tensor]:
    r"""How far the mode masses of reference ``ref`` are from those of reference ``against``,
    on the modes of ``against``: per point :math:`\max_m |p_{ref}(M_m) - p_{against}(M_m)|`,
    ``(N,)``, and the modes' ``labels`` (for :func:`num_modes`)."""
    centres, labels = reference_modes(against)
    z_ref, lw_ref = draws(ref)
    z_against, lw_against = draws(against)
    exact = mode_masses(z_against, centres, labels, lw_against)
    found = mode_masses(z_ref, centres, labels, lw_ref)
    return (exact - found).abs().amax(-1), labels
