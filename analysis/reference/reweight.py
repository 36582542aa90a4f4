r"""Re-weighting MCMC draws so that every mode has its posterior mass, and :math:`\log p(x)`.

**Re-weighting.** A chain does not cross between well separated modes, so the pooled draws
put mass on modes in proportion to the number of chains that found them, not to the modes'
posterior masses. So the modes are found first, on the pooled draws and with the posterior's
own density (:func:`pyrofail.analysis.reference.modes.find_modes` with ``log_density``), and every
mode's mass :math:`P_m` is estimated by importance sampling (defensive mixtures: Hesterberg
1995, Owen & Zhou 2000; Pareto smoothing: Vehtari et al. 2024) with, per point, the proposal

.. math::

    q(z) = (1 - \alpha) \sum_m \pi_m q_m(z) + \alpha\, \mathcal N(0, I), \qquad
    q_m(z) = \beta\, t_4\big(z; \bar z_m, \hat\Sigma_m\big)
        + (1 - \beta - \lambda_m) \frac1J \sum_{j=1}^{J} \mathcal N\big(z; z_{m,j}, h^2 \hat\Sigma_m\big)
        + \frac{\lambda_m}{|A_m|} \sum_{a \in A_m} t_4\big(z; z^*_a, H_a^{-1}\big),

for every mode ``m`` of the draws a Student-t, a kernel mixture on ``J`` of the mode's draws
(Silverman's :math:`h`) and a Student-t on the Laplace approximation of every local maximum
:math:`z^*_a` of :math:`\log p(x, z)` that the mode holds (``maxima``:
:mod:`pyrofail.analysis.reference.maxima`; :math:`\lambda_m = 0.1` when it holds any). A maximum that no
mode of the draws holds (:func:`cover`: no draw on its side of every valley, as when no chain
visited it, or its chain wandered off) is a mode of its own, :math:`q_m = t_4(z; z^*_a,
H_a^{-1})`: its mass is estimated all the same. Mode weights :math:`\pi_m` come from the
Laplace approximation of the modes' masses (mixed with equal weights), and the prior is a
defensive component (``defensive`` = :math:`\alpha`). With ``num_importance`` draws
:math:`z_s \sim q` and weights :math:`w_s = p(x, z_s) / q(z_s)`:

* :math:`\log p(x) = \log \frac1S \sum_s w_s`, with the delta-method standard error
  :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/S}`;
* ``missing_mass`` :math:`= \sum_s \tilde w_s [\text{the prior component dominates } q(z_s)
  \text{ and } z_s \text{ is in no mode's basin}]`, with :math:`\tilde w` the Pareto-smoothed
  normalised weights (``arviz.psislw``): posterior mass outside every mode found. A draw where
  the prior component dominates but the way up from it to its nearest representative of a mode
  never dips (below 0.9 of the lower end) is in the tail of that mode and counts for it;
* :math:`P_m = \sum_s \tilde w_s\, [\text{not so}]\, r_m(z_s)`, :math:`r_m` the share of mode
  ``m``'s components in the proposal density at :math:`z_s`; so
  :math:`\sum_m P_m = 1 - \text{missing\_mass}`: mass no mode explains is never renormalised
  away, and ``unrepresented_mass`` is the :math:`P_m` of the modes without draws;
* every NUTS draw in mode ``m`` weighs :math:`P_m / S_m`, :math:`S_m` the number of pooled
  draws in it (``sample_stats.log_weight``): within a mode the draws of every chain sample
  the posterior restricted to that mode, whichever chain they come from, so the weighted
  draws follow the posterior with the right mode masses even when a chain crosses now and then.
  Normalised over the draws, these weights necessarily leave out ``missing_mass`` and
  ``unrepresented_mass``: the draws are off by about that much, which the quality gate
  (:mod:`pyrofail.analysis.reference.quality`) reads.

**Diagnostics** per point (``diagnostics`` group), computed by :mod:`pyrofail.analysis.reference.stats`:
``rhat``, the rank-normalised split :math:`\hat R` (Vehtari et al. 2021), the larger of bulk and
tail, largest over latents, over all chains (large wherever chains sit in different modes: by
design, as chains start at every mode); ``rhat_within_modes``, the same within each mode over
the chains' draws in it, largest over modes (NaN when no mode has enough draws), the one to
gate on; ``ess``, :math:`1 / \sum_m \bar P_m^2 / \mathrm{ESS}_m` (:math:`\bar P_m` the draws'
normalised mode weights), with :math:`\mathrm{ESS}_m` the sum over chains of their bulk ESS
(of the draws less their mode's mean) times the fraction of their draws in mode ``m``;
``divergences``, divergent transitions of the point's chains after warm-up (a divergent joint
trajectory is charged to the sub-problems whose own energy error explains it); ``pareto_k``;
``missing_mass``; ``unrepresented_mass``; ``num_modes`` (the draws' modes and the unrepresented
ones of at least ``modes.MIN_MASS``); ``mode_mass`` :math:`P_m`, the draws' modes first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2

from pyrofail.analysis.reference import stats
from pyrofail.analysis.reference.idata import arviz, build_inference_data
from pyrofail.analysis.reference.maxima import Maxima, find_maxima, log_joint_chunked
from pyrofail.analysis.reference.modes import DIP, MIN_MASS, assign, find_modes
from pyrofail.analysis.reference.proposal import Proposal

__all__ = ["Weighted", "assemble", "cover", "diagnose", "from_draws", "mode_masses_by_importance", "weigh"]

COVER_POINTS = 16  # points on the segment from a maximum to the nearest draw
BASIN_DIP = 0.9  # an importance draw is in a mode's basin when the way up to it never dips below this
BASIN_REPS = 4  # representatives tried per importance draw for the way up
COVER_QUANTILE = 0.999  # of the Laplace approximation: the ball in which a maximum's draws lie


def cover(model, x, pooled, lp, lab, maxima: Maxima, dip: float = DIP) -> torch.Tensor:
    r"""The mode of the draws that holds each maximum, ``(N, J)``, or ``-1`` where none does.

    ``pooled`` ``(N, T, K)`` are the modes' labelled points (their representatives), ``lp`` their
    :math:`\log p(x, z)` and ``lab`` their labels. A maximum :math:`z^*` belongs to the mode of
    the point nearest to it (in its Laplace metric) when that point lies in the maximum's Laplace
    ball (its 99.9% ellipsoid) and :math:`\log p(x, z)` on the segment between them never falls
    below ``dip`` times the lower of the two ends (the persistence rule of
    :mod:`pyrofail.analysis.reference.modes`): no valley
    separates them. A maximum with no draw on its side of every valley is a mode no chain visited.
    """
    n, j_max, k = maxima.z.shape
    rows = torch.arange(n)
    nearest = torch.zeros(n, j_max, dtype=torch.long)
    near_d2 = torch.zeros(n, j_max, dtype=pooled.dtype)
    for j in range(j_max):  # one maximum at a time bounds the memory at (N, T, K)
        diff = (pooled - maxima.z[:, j, None]).transpose(1, 2)  # (N, K, T)
        white = torch.linalg.solve_triangular(maxima.tril[:, j], diff, upper=False)
        near_d2[:, j], nearest[:, j] = white.square().sum(1).min(-1)
    zd = pooled[rows[:, None], nearest]  # (N, J, K)
    t = torch.arange(1, COVER_POINTS + 1, dtype=pooled.dtype) / (COVER_POINTS + 1)
    seg = maxima.z[None] + t[:, None, None, None] * (zd - maxima.z)[None]  # (T, N, J, K)
    with torch.no_grad():
        low = log_joint_chunked(model, seg.transpose(1, 2), x).nan_to_num(nan=-math.inf).amin(0).T  # (N, J)
    ends = torch.minimum(maxima.log_joint, lp[rows[:, None], nearest])
    # and the point must lie in the maximum's Laplace ball: a point in the valley next to an
    # unvisited maximum passes the segment test (the way down to it never dips below it) and
    # belongs to the mode on the valley's other side
    ball = float(chi2.ppf(COVER_QUANTILE, k))
    covered = maxima.valid & (low >= ends + math.log(dip)) & (near_d2 <= ball)
    return torch.where(covered, lab[rows[:, None], nearest], torch.full_like(nearest, -1))


def _basin_of_draws(model, x, zs, lj, centres, labels, which, dip: float = BASIN_DIP) -> torch.Tensor:
    r"""For the importance draws ``zs`` ``(M, N, K)`` (their :math:`\log p(x, z)`: ``lj``
    ``(M, N)``) where ``which``: the mode of the nearest of the :data:`BASIN_REPS` nearest
    representatives (``centres`` ``(N, R, K)``, ``labels`` ``(N, R)``) that the draw climbs to:
    :math:`\log p(x, z)` along the segment from the draw to it never falls below ``dip`` times
    the highest density already passed (the way is uphill, as gradient ascent from the draw would
    go); else ``-1`` (``(M, N)``; ``-1`` wherever ``which`` is false). ``dip`` is close to 1: a
    draw on the slope of a mode that no chain visited is not handed to a mode beyond that mode's
    peak, or beyond a valley."""
    out = torch.full(which.shape, -1, dtype=torch.long)
    mi, ni = which.nonzero(as_tuple=True)
    if mi.numel() == 0:
        return out
    z = zs[mi, ni]  # (E, K)
    d = torch.cdist(z[:, None], centres[ni], compute_mode="donot_use_mm_for_euclid_dist")[:, 0]  # (E, R)
    near = d.topk(min(BASIN_REPS, d.shape[-1]), dim=-1, largest=False).indices  # (E, B), nearest first
    rep = centres[ni[:, None], near]  # (E, B, K)
    t = torch.arange(1, COVER_POINTS + 1, dtype=z.dtype) / COVER_POINTS  # up to the representative
    seg = z[None, :, None] + t[:, None, None, None] * (rep - z[:, None])[None]  # (T, E, B, K)
    with torch.no_grad():
        path = log_joint_chunked(model, seg, x[ni][:, None]).nan_to_num(nan=-math.inf)  # (T, E, B)
    own = lj[mi, ni][None, :, None].expand(1, -1, path.shape[-1])
    path = torch.cat([own, path])
    # uphill all the way: never below the highest point passed (a mode in between is a descent)
    ok = (path >= path.cummax(0).values + math.log(dip)).all(0)
    first = ok.double().argmax(-1)  # the nearest that passes
    hit = ok.any(-1)
    out[mi[hit], ni[hit]] = labels[ni[hit], near[hit, first[hit]]]
    return out


def mode_masses_by_importance(
    model,
    x: torch.Tensor,
    pooled: torch.Tensor,
    lp: torch.Tensor,
    lab: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    *,
    maxima: Maxima | None = None,
    num_importance: int = 4000,
    defensive: float = 0.1,
    seed: int = 0,
) -> dict:
    r"""Mode masses, :math:`\log p(x)` and PSIS diagnostics (module docstring) for draws
    ``pooled`` ``(N, T, K)`` with log densities ``lp`` ``(N, T)`` and modes ``lab`` ``(N, T)``, the
    modes being ``(centres, labels)`` of :func:`pyrofail.analysis.reference.modes.find_modes`, and the
    optimisation's ``maxima`` (:func:`pyrofail.analysis.reference.maxima.find_maxima`) where known.

    Returns ``mode_mass`` ``(N, G)`` of the draws' modes, ``unrepresented`` ``(N, U)`` of the
    maxima no draw covers, ``missing_mass``, ``unrepresented_mass``, ``log_px``,
    ``log_px_stderr`` and ``pareto_k``; per point the masses and ``missing_mass`` sum to 1.
    """
    az = arviz()
    n_modes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(int(seed) + 1)
    group = None
    if maxima is not None:
        # the modes' representatives, not every draw: a draw that a chain left on its way across
        # a valley carries the label of the nearest representative, on the far side of the valley
        with torch.no_grad():
            lp_centres = log_joint_chunked(model, centres.transpose(0, 1).to(x.dtype), x).T
        group = cover(model, x, centres.to(x.dtype), lp_centres, labels, maxima)
    proposal = Proposal(pooled, lab, lp, n_modes, maxima, group, defensive, gen)
    zs = proposal.sample(num_importance, gen)  # (M, N, K)
    comp = proposal.log_probs(zs)  # (M, N, 2G+J+1)
    with torch.no_grad():
        lj = log_joint_chunked(model, zs, x)  # (M, N)
    lw = lj - torch.logsumexp(comp, -1)
    lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -math.inf))
    lse1, lse2 = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
    log_px = lse1 - math.log(num_importance)
    rel = torch.expm1(lse2 - math.log(num_importance) - 2 * log_px).clamp_min(0)
    with warnings.catch_warnings():
        # psislw warns when a tail is too short to fit a Pareto; k is then inf, which we report
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        smoothed, pareto_k = az.psislw(lw.T.numpy().copy())
    w = torch.softmax(torch.from_numpy(np.asarray(smoothed)).to(lw.dtype), -1).T  # (M, N)
    # where the prior component dominates the proposal, no mode explains the draw: missing mass;
    # elsewhere each importance draw belongs to the modes in proportion to their components' density
    outside = torch.softmax(comp, -1)[..., -1] > 0.5  # (M, N)
    resp = torch.softmax(proposal.group_log_density(comp), -1).nan_to_num(0.0)  # (M, N, G + U)
    # ... unless the draw lies in the basin of a mode of the draws, in its tail where the prior
    # component happens to outweigh the mode's own: no valley between it and the mode's nearest
    # representative. Only a draw a valley away from every mode is mass no mode explains.
    basin = _basin_of_draws(model, x, zs, lj, centres.to(zs.dtype), labels, outside)  # (M, N)
    inside = outside & (basin >= 0)
    resp = torch.where(
        inside[..., None],
        torch.nn.functional.one_hot(basin.clamp_min(0), resp.shape[-1]).to(resp.dtype),
        resp,
    )
    outside = outside & ~inside
    mass = torch.einsum("mn,mng->ng", w * ~outside, resp)
    uncovered = None if group is None else maxima.valid & (group < 0)
    return {
        "uncovered": uncovered if uncovered is not None else torch.zeros(x.shape[0], 0, dtype=torch.bool),
        "mode_mass": mass[:, :n_modes],
        "unrepresented": mass[:, n_modes:],
        "unrepresented_mass": mass[:, n_modes:].sum(-1),
        "missing_mass": (w * outside).sum(0),
        "log_px": log_px,
        "log_px_stderr": (rel / num_importance).sqrt(),
        "pareto_k": torch.from_numpy(np.asarray(pareto_k, dtype=np.float64)),
    }


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def _log_joint_chunked(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x_n, z[..., n, :])`` for ``z`` ``(..., N, K)``, a few thousand points at a time."""
    lead = z.shape[:-2]
    return log_joint_chunked(model, z.reshape(-1, *z.shape[-2:]), x).reshape(*lead, x.shape[0])


def _segment_density(model, x: torch.Tensor):
    """``(z, point) -> log p(x_point, z)`` for :func:`pyrofail.analysis.reference.modes.find_modes`:
    ``z`` ``(E, T, K)``, ``point`` ``(E,)``, returning ``(E, T)``."""

    def density(z, point):
        with torch.no_grad():
            return log_joint_chunked(model, z.transpose(0, 1).to(x.dtype), x[point]).transpose(0, 1)

    return density


@dataclass
class Weighted:
    r"""The draws of every point with their modes and weights (:func:`weigh`).

    ``z`` ``(C, S, N, K)`` and their :math:`\log p(x, z)` ``lp`` ``(C, S, N)``; ``pooled``
    ``(N, CS, K)`` (chains concatenated) with their modes ``lab`` ``(N, CS)``; the modes'
    representatives ``centres`` ``(N, M, K)`` and ``labels`` ``(N, M)``
    (:func:`pyrofail.analysis.reference.modes.find_modes`); ``log_w`` ``(N, CS)`` the draws'
    normalised log weights; ``masses`` the output of :func:`mode_masses_by_importance` for all
    points (``mode_mass`` ``(N, G)``, ``unrepresented`` ``(N, U)``, ``missing_mass``,
    ``unrepresented_mass``, ``log_px``, ``log_px_stderr``, ``pareto_k``); ``uncovered``
    ``(N, J)``: the maxima no mode of the draws holds (:func:`cover`)."""

    z: torch.Tensor
    lp: torch.Tensor
    pooled: torch.Tensor
    lab: torch.Tensor
    centres: torch.Tensor
    labels: torch.Tensor
    log_w: torch.Tensor
    masses: dict
    uncovered: torch.Tensor

    @property
    def n_modes(self) -> int:
        return int(self.labels.max()) + 1


def weigh(
    model,
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    maxima: Maxima | None,
    num_importance: int = 4000,
    defensive: float = 0.1,
    seed: int = 0,
    budget: int = 2**18,
) -> Weighted:
    """Modes of the draws ``z`` ``(C, S, N, K)`` and the weights that give each its posterior
    mass (module docstring), with ``maxima`` (or ``None``) as components of the proposal."""
    c, s, n, k = z.shape
    z = z.to(x.dtype)
    lp = _log_joint_chunked(model, z, x)  # (C, S, N)
    pooled = z.permute(2, 0, 1, 3).reshape(n, c * s, k)
    lp_pooled = lp.permute(2, 0, 1).reshape(n, c * s)
    centres, labels = find_modes(pooled, log_density=lp_pooled, segment=_segment_density(model, x), seed=seed)
    lab = assign(pooled, centres, labels)  # (N, CS)
    n_modes = int(labels.max()) + 1
    per = max(1, budget // num_importance)
    parts = [
        mode_masses_by_importance(
            model, x[i], pooled[i], lp_pooled[i], lab[i], centres[i], labels[i],
            maxima=None if maxima is None else maxima[i],
            num_importance=num_importance, defensive=defensive, seed=seed + j,
        )
        for j, i in enumerate(_chunks(n, per))
    ]  # fmt: skip
    n_unrep = max(p["unrepresented"].shape[1] for p in parts)
    n_max = max(p["uncovered"].shape[1] for p in parts)
    for p in parts:
        for key, width in (("mode_mass", n_modes), ("unrepresented", n_unrep), ("uncovered", n_max)):
            p[key] = torch.nn.functional.pad(p[key], (0, width - p[key].shape[1]))
    rw = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    uncovered = rw.pop("uncovered")
    # every draw of mode m weighs P_m / (number of draws in m); normalised over the draws, these
    # weights leave out the missing and unrepresented mass, which the diagnostics report
    ones = torch.ones_like(lab, dtype=torch.float64)
    count = torch.zeros(n, n_modes, dtype=torch.float64).scatter_add_(1, lab, ones)
    log_w = (rw["mode_mass"].clamp_min(1e-300).log() - count.clamp_min(1).log()).gather(1, lab)  # (N, CS)
    return Weighted(z, lp, pooled, lab, centres, labels, torch.log_softmax(log_w, -1), rw, uncovered)


def diagnose(w: Weighted, diverging: torch.Tensor | None = None) -> dict:
    r"""The per-point diagnostics of the reference layout (module docstring) of re-weighted draws:
    :math:`\hat R` over all chains and within modes, ESS, divergences, the importance sampling's
    ``pareto_k``, ``missing_mass``, ``unrepresented_mass``, ``num_modes`` and ``mode_mass``."""
    c, s, n, _ = w.z.shape
    rw = w.masses
    if diverging is None:
        diverging = torch.zeros(c, s, n, dtype=torch.bool)
    rhat, within, ess = stats.mode_diagnostics(w.z, w.lab, rw["mode_mass"])
    # modes of non-negligible mass: the draws' light modes are kept apart (they are a valley away
    # from the rest) but are not counted
    found = (rw["mode_mass"] >= MIN_MASS).sum(-1) + (rw["unrepresented"] >= MIN_MASS).sum(-1)
    return {
        "rhat": rhat,
        "rhat_within_modes": within,
        "ess": ess,
        "divergences": diverging.sum((0, 1)).double(),
        "pareto_k": rw["pareto_k"],
        "missing_mass": rw["missing_mass"],
        "unrepresented_mass": rw["unrepresented_mass"],
        "num_modes": found.double(),
        "mode_mass": torch.cat([rw["mode_mass"], rw["unrepresented"]], -1),
    }


def assemble(w: Weighted, x: torch.Tensor, diagnostics: dict, attrs: dict, diverging=None):
    """The reference layout (:mod:`pyrofail.analysis.reference.idata`) of re-weighted draws:
    the weighted moments, the draws, their weights and ``diagnostics``."""
    c, s, n, _ = w.z.shape
    p = w.log_w.exp()
    mean = (p[..., None] * w.pooled.double()).sum(1)
    dev = w.pooled.double() - mean[:, None]
    cov = torch.einsum("ns,nsk,nsl->nkl", p, dev, dev)
    if diverging is None:
        diverging = torch.zeros(c, s, n, dtype=torch.bool)
    return build_inference_data(
        z=w.z,
        log_weight=w.log_w.reshape(n, c, s).permute(1, 2, 0),
        x=x,
        log_px=w.masses["log_px"],
        log_px_stderr=w.masses["log_px_stderr"],
        mean=mean,
        cov=cov,
        diagnostics=diagnostics,
        attrs=attrs,
        diverging=diverging,
        lp=w.lp,
    )


def from_draws(
    model,
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    diverging: torch.Tensor | None = None,
    num_importance: int = 4000,
    defensive: float = 0.1,
    seed: int = 0,
    attrs: dict | None = None,
    budget: int = 2**18,
    maxima: Maxima | None | bool = None,
    coverage: dict | None = None,
):
    r"""The reference layout (:mod:`pyrofail.analysis.reference`) from MCMC draws ``z``
    ``(C, S, N, K)`` of any sampler: modes, re-weighting, :math:`\log p(x)`, moments and
    diagnostics as in the module docstring (:func:`weigh`, :func:`diagnose`, :func:`assemble`).

    :param maxima: the local maxima of :math:`\log p(x, z)`
        (:func:`pyrofail.analysis.reference.maxima.find_maxima`), each of which gets a component in the
        importance proposal; ``None`` finds them here (seeded by ``seed``), ``False`` uses none
        (the draws and the prior component alone).
    :param coverage: a dict to receive ``"uncovered"`` ``(N, J)``: the maxima that no mode of
        the draws holds (:func:`cover`), for starting chains at them.
    """
    if maxima is None or maxima is True:
        maxima = find_maxima(model, x, seed=seed)
    elif maxima is False:
        maxima = None
    w = weigh(
        model,
        x,
        z,
        maxima=maxima,
        num_importance=num_importance,
        defensive=defensive,
        seed=seed,
        budget=budget,
    )
    if coverage is not None:
        coverage["uncovered"] = w.uncovered
    return assemble(w, x, diagnose(w, diverging), attrs or {"method": "nuts"}, diverging)
