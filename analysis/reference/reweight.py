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

import numpy as np
import pyro.distributions as dist
import torch
from scipy.stats import chi2

from pyrofail.analysis.reference import stats
from pyrofail.analysis.reference.idata import arviz, build_inference_data
from pyrofail.analysis.reference.maxima import Maxima, find_maxima
from pyrofail.analysis.reference.modes import DIP, MIN_MASS, assign, find_modes

__all__ = ["cover", "from_draws", "mode_masses_by_importance"]

STUDENT_DF = 4.0
STUDENT_WEIGHT = 0.2  # of the Student-t components, within a mode's share of the proposal
LAPLACE_WEIGHT = 0.1  # of the Laplace components of the maxima a mode holds, within its share
FLOOR = 0.2  # share of the mode weights spread equally over the modes
KERNELS = 64  # kernels per mode and latent dimension in the importance proposal
COVER_POINTS = 16  # points on the segment from a maximum to the nearest draw
BASIN_DIP = 0.9  # an importance draw is in a mode's basin when the way up to it never dips below this
BASIN_REPS = 4  # representatives tried per importance draw for the way up
COVER_QUANTILE = 0.999  # of the Laplace approximation: the ball in which a maximum's draws lie


def _t_draw(loc, tril, eps, chi2):
    return loc + torch.sqrt(STUDENT_DF / chi2)[..., None] * (tril @ eps[..., None])[..., 0]


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
        low = model.log_joint(seg.transpose(1, 2), x).nan_to_num(nan=-math.inf).amin(0).T  # (N, J)
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
        path = model.log_joint(seg, x[ni][:, None]).nan_to_num(nan=-math.inf)  # (T, E, B)
    own = lj[mi, ni][None, :, None].expand(1, -1, path.shape[-1])
    path = torch.cat([own, path])
    # uphill all the way: never below the highest point passed (a mode in between is a descent)
    ok = (path >= path.cummax(0).values + math.log(dip)).all(0)
    first = ok.double().argmax(-1)  # the nearest that passes
    hit = ok.any(-1)
    out[mi[hit], ni[hit]] = labels[ni[hit], near[hit, first[hit]]]
    return out


class _Proposal:
    r"""The importance proposal of one chunk of points (module docstring). Components, in order:
    per mode ``g`` of the draws a Student-t (``t``) and a Gaussian kernel mixture on ``J = 64 K``
    (at most 256) of the mode's draws (``kde``, with the mode's covariance times Silverman's
    factor); per maximum of the optimisation a Student-t on its Laplace approximation; the
    prior. The groups (modes) are the modes of the draws, then the maxima no draw covers.
    """

    def __init__(self, pooled, lab, lp, n_modes: int, maxima, group, defensive: float, gen, kernels=None):
        n, t, k = pooled.shape
        dtype = pooled.dtype
        kernels = kernels or min(256, KERNELS * k)  # more kernels in more dimensions
        onehot = torch.nn.functional.one_hot(lab, n_modes).to(dtype)  # (N, T, G)
        cnt = onehot.sum(1)  # (N, G)
        loc = torch.einsum("ntg,ntk->ngk", onehot, pooled) / cnt.clamp_min(1)[..., None]
        dev = pooled[:, None] - loc[:, :, None]  # (N, G, T, K)
        cov = torch.einsum("ntg,ngtk,ngtl->ngkl", onehot, dev, dev) / (cnt - 1).clamp_min(1)[..., None, None]
        eye = torch.eye(k, dtype=dtype)
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        cov = torch.where((cnt >= k + 2)[..., None, None], cov, scale[..., None, None] * eye)
        cov = cov + 1e-6 * scale[..., None, None] * eye + 1e-300 * eye
        self.loc, self.tril = loc, torch.linalg.cholesky(cov)
        self.log_det = self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (N, G)
        # J kernel centres per mode, drawn uniformly from the mode's draws
        member = onehot.transpose(1, 2).reshape(n * n_modes, t) + 1e-30  # absent modes: any draw
        pick = torch.multinomial(member, kernels, replacement=True, generator=gen).reshape(n, -1)
        self.reps = pooled.gather(1, pick[..., None].expand(-1, -1, k)).reshape(n, n_modes, kernels, k)
        self.h = (4.0 / ((k + 2) * kernels)) ** (1.0 / (k + 4))  # Silverman's rule
        # the maxima: their groups, the modes of the draws or new groups for uncovered ones
        if maxima is None:
            none = torch.zeros(n, 0, dtype=dtype)
            maxima = Maxima(
                none[..., None].expand(n, 0, k),
                none,
                none,
                none[..., None, None].expand(n, 0, k, k),
                none.bool(),
            )
            group = torch.zeros(n, 0, dtype=torch.long)
        uncovered = maxima.valid & (group < 0)
        rank = uncovered.long().cumsum(-1) - 1
        self.n_unrep = int(uncovered.sum(-1).max()) if uncovered.numel() else 0
        self.group = torch.where(uncovered, n_modes + rank, group.clamp_min(0))  # (N, J)
        self.maxima = maxima
        n_groups = n_modes + self.n_unrep
        # group weights: the Laplace approximation of each mode's mass, p(x, z_max) |2 pi Sigma|^(1/2)
        # (of the draws' top and covariance, or of the maximum), mixed with equal weights (FLOOR)
        # so that no mode is left uncovered
        top = torch.full_like(cnt, -math.inf).scatter_reduce_(1, lab, lp, "amax")
        lap_draws = torch.where(cnt > 0, top + self.log_det + 0.5 * k * math.log(2 * math.pi), -math.inf)
        lap_unrep = torch.full((n, self.n_unrep), -math.inf, dtype=dtype)
        if self.n_unrep:
            idx = (self.group - n_modes).clamp(0, self.n_unrep - 1)
            src = maxima.log_mass.masked_fill(~uncovered, -math.inf)
            lap_unrep = lap_unrep.scatter_reduce(1, idx, src, "amax")
        laplace = torch.cat([lap_draws, lap_unrep], -1)  # (N, G + U)
        present = torch.isfinite(laplace)
        g_count = present.sum(-1, keepdim=True).to(dtype)
        mode_w = torch.where(present, (1 - FLOOR) * torch.softmax(laplace, -1) + FLOOR / g_count, 0.0)
        log_group = mode_w.log() + math.log(1.0 - defensive)  # -inf where absent
        # within a mode of the draws: t, kernels and the Laplace components of the maxima it holds
        held = torch.zeros(n, n_groups, dtype=dtype).scatter_add_(1, self.group, maxima.valid.to(dtype))
        lap_share = torch.where(held[:, :n_modes] > 0, LAPLACE_WEIGHT, 0.0)
        kde = 1.0 - STUDENT_WEIGHT - lap_share
        per_max = torch.where(
            self.group < n_modes,
            torch.cat([lap_share, torch.ones(n, self.n_unrep, dtype=dtype)], -1).gather(1, self.group),
            1.0,
        ) / held.gather(1, self.group).clamp_min(1)
        log_max = (log_group.gather(1, self.group) + per_max.log()).masked_fill(~maxima.valid, -math.inf)
        self.log_mix = torch.cat(
            [
                log_group[:, :n_modes] + math.log(STUDENT_WEIGHT),
                log_group[:, :n_modes] + kde.log(),
                log_max,
                torch.full((n, 1), math.log(defensive) if defensive > 0 else -math.inf, dtype=dtype),
            ],
            -1,
        )  # (N, 2G + J + 1)
        self.n_modes, self.n_groups = n_modes, n_groups

    def sample(self, m: int, gen: torch.Generator) -> torch.Tensor:
        n, g, k = self.loc.shape
        j_max = self.maxima.z.shape[1]
        comp = torch.multinomial(
            torch.softmax(self.log_mix, -1).float(), m, replacement=True, generator=gen
        ).T  # (M, N)
        eps = torch.randn(m, n, k, generator=gen, dtype=self.loc.dtype)
        # a chi-square variate with STUDENT_DF = 4 degrees of freedom is a sum of 4 squared normals
        chi2 = torch.randn(m, n, int(STUDENT_DF), generator=gen, dtype=self.loc.dtype).pow(2).sum(-1)
        rows = torch.arange(n).expand(m, n)
        mode = torch.where(comp < g, comp, comp - g).clamp_max(g - 1)  # (M, N)
        t_draw = _t_draw(self.loc[rows, mode], self.tril[rows, mode], eps, chi2)
        j = torch.randint(self.reps.shape[2], (m, n), generator=gen)
        shaped = (self.tril[rows, mode] @ eps[..., None])[..., 0]
        kde_draw = self.reps[rows, mode, j] + self.h * shaped
        out = torch.where((comp < g)[..., None], t_draw, kde_draw)
        if j_max:
            mx = (comp - 2 * g).clamp(0, j_max - 1)
            lap_draw = _t_draw(self.maxima.z[rows, mx], self.maxima.tril[rows, mx], eps, chi2)
            out = torch.where(((comp >= 2 * g) & (comp < 2 * g + j_max))[..., None], lap_draw, out)
        return torch.where((comp == 2 * g + j_max)[..., None], eps, out)

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Weighted log densities of every component at ``z`` ``(M, N, K)``: ``(M, N, 2G + J + 1)``."""
        m, n, k = z.shape
        df = torch.tensor(STUDENT_DF, dtype=z.dtype)
        lt = dist.MultivariateStudentT(df, self.loc, scale_tril=self.tril).log_prob(z[:, :, None, :])
        lk = []
        for g in range(self.n_modes):
            # centre on the mode, then whiten by its covariance: the distances to its kernels are
            # then of order one however narrow the mode and far from zero, and float64 keeps
            # them exact (uncentred single precision loses them for a narrow mode far from 0)
            tril, loc = self.tril[:, g], self.loc[:, g, :, None]  # (N, K, K), (N, K, 1)
            zw = torch.linalg.solve_triangular(tril, z.permute(1, 2, 0) - loc, upper=False)  # (N, K, M)
            rw = torch.linalg.solve_triangular(tril, self.reps[:, g].transpose(1, 2) - loc, upper=False)
            d2 = torch.cdist(zw.transpose(1, 2), rw.transpose(1, 2)).square_()  # (N, M, J)
            lse = torch.logsumexp(d2.mul_(-0.5 / self.h**2), -1)
            lk.append(lse - math.log(self.reps.shape[2]) - k * math.log(self.h) - self.log_det[:, g, None])
        lk = torch.stack(lk, -1).transpose(0, 1) - 0.5 * k * math.log(2 * math.pi)  # (M, N, G)
        parts = [lt, lk]
        if self.maxima.z.shape[1]:
            lap = dist.MultivariateStudentT(df, self.maxima.z, scale_tril=self.maxima.tril)
            parts.append(lap.log_prob(z[:, :, None, :]))  # (M, N, J)
        lp = -0.5 * (z * z).sum(-1, keepdim=True) - 0.5 * k * math.log(2 * math.pi)
        return torch.cat([*parts, lp], -1) + self.log_mix

    def group_log_density(self, comp: torch.Tensor) -> torch.Tensor:
        """The weighted density of each group's components ``(M, N, G + U)`` from the components'
        ``comp`` ``(M, N, 2G + J + 1)``."""
        g = self.n_modes
        m, n = comp.shape[:2]
        out = torch.full((m, n, self.n_groups), -math.inf, dtype=comp.dtype)
        out[..., :g] = torch.logaddexp(comp[..., :g], comp[..., g : 2 * g])
        for j in range(self.maxima.z.shape[1]):
            idx = self.group[:, j].expand(m, n)[..., None]
            out.scatter_(2, idx, torch.logaddexp(out.gather(2, idx), comp[..., 2 * g + j, None]))
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
            lp_centres = model.log_joint(centres.transpose(0, 1).to(x.dtype), x).T
        group = cover(model, x, centres.to(x.dtype), lp_centres, labels, maxima)
    proposal = _Proposal(pooled, lab, lp, n_modes, maxima, group, defensive, gen)
    zs = proposal.sample(num_importance, gen)  # (M, N, K)
    comp = proposal.log_probs(zs)  # (M, N, 2G+J+1)
    with torch.no_grad():
        lj = model.log_joint(zs, x)  # (M, N)
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


def _log_joint_chunked(model, z: torch.Tensor, x: torch.Tensor, budget: int = 2**18) -> torch.Tensor:
    """``log p(x_n, z[..., n, :])`` for ``z`` ``(..., N, K)``, a bounded number at a time."""
    lead = z.shape[:-2]
    flat = z.reshape(-1, *z.shape[-2:])
    per = max(1, budget // max(1, x.shape[0]))
    with torch.no_grad():
        out = torch.cat([model.log_joint(flat[i], x) for i in _chunks(flat.shape[0], per)])
    return out.reshape(*lead, x.shape[0])


def _segment_density(model, x: torch.Tensor):
    """``(z, point) -> log p(x_point, z)`` for :func:`pyrofail.analysis.reference.modes.find_modes`:
    ``z`` ``(E, T, K)``, ``point`` ``(E,)``, returning ``(E, T)``."""

    def density(z, point):
        with torch.no_grad():
            return model.log_joint(z.transpose(0, 1).to(x.dtype), x[point]).transpose(0, 1)

    return density


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
    diagnostics as in the module docstring.

    :param maxima: the local maxima of :math:`\log p(x, z)`
        (:func:`pyrofail.analysis.reference.maxima.find_maxima`), each of which gets a component in the
        importance proposal; ``None`` finds them here (seeded by ``seed``), ``False`` uses none
        (the draws and the prior component alone).
    :param coverage: a dict to receive ``"uncovered"`` ``(N, J)``: the maxima that no mode of
        the draws holds (:func:`cover`), for starting chains at them.
    """
    c, s, n, k = z.shape
    z = z.to(x.dtype)
    if maxima is None or maxima is True:
        maxima = find_maxima(model, x, seed=seed)
    elif maxima is False:
        maxima = None
    lp = _log_joint_chunked(model, z, x, budget)  # (C, S, N)
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
    if coverage is not None:
        coverage["uncovered"] = uncovered
    # every draw of mode m weighs P_m / (number of draws in m); normalised over the draws, these
    # weights leave out the missing and unrepresented mass, which the diagnostics report
    ones = torch.ones_like(lab, dtype=torch.float64)
    count = torch.zeros(n, n_modes, dtype=torch.float64).scatter_add_(1, lab, ones)
    represented = rw["mode_mass"].clamp_min(1e-300)
    log_w = (represented.log() - count.clamp_min(1).log()).gather(1, lab)  # (N, CS)
    log_w = torch.log_softmax(log_w, -1)
    w = log_w.exp()
    mean = (w[..., None] * pooled.double()).sum(1)
    dev = pooled.double() - mean[:, None]
    cov = torch.einsum("ns,nsk,nsl->nkl", w, dev, dev)
    # R-hat over all chains, and within each mode over the chains' draws in it
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
            rg = stats.rhat_within(zc[has], mask[has][:, None].expand(-1, k, -1, -1), min_draws // 2).amax(-1)
            within[has] = torch.fmax(within[has], rg)
    within = torch.where(torch.isfinite(within), within, math.nan)  # no mode with enough draws
    # ESS of the weighted draws: per mode, each chain contributes its ESS (of the draws less
    # their mode's mean, so that jumps between modes do not count) times its time there
    centre = (
        torch.zeros(n, n_modes, k, dtype=torch.float64).index_put_(
            (torch.arange(n)[:, None].expand_as(lab), lab), pooled.double(), accumulate=True
        )
        / count.clamp_min(1)[..., None]
    )
    centred = (pooled.double() - centre.gather(1, lab[..., None].expand(-1, -1, k))).reshape(n, c, s, k)
    chain_ess = stats.ess(centred.permute(0, 3, 1, 2)[..., None, :]).amin(1)  # (N, C): each chain alone
    mode_ess = (frac * chain_ess[..., None]).sum(1)  # (N, G)
    share = represented / represented.sum(-1, keepdim=True)  # the draws' weights per mode
    point_ess = 1.0 / (share.pow(2) / mode_ess.clamp_min(1e-12)).sum(-1)
    if diverging is None:
        diverging = torch.zeros(c, s, n, dtype=torch.bool)
    # modes of non-negligible mass: the draws' light modes are kept apart (they are a valley away
    # from the rest) but are not counted
    found = (rw["mode_mass"] >= MIN_MASS).sum(-1) + (rw["unrepresented"] >= MIN_MASS).sum(-1)
    diagnostics = {
        "rhat": stats.rhat(zc).amax(-1),
        "rhat_within_modes": within,
        "ess": point_ess,
        "divergences": diverging.sum((0, 1)).double(),
        "pareto_k": rw["pareto_k"],
        "missing_mass": rw["missing_mass"],
        "unrepresented_mass": rw["unrepresented_mass"],
        "num_modes": found.double(),
        "mode_mass": torch.cat([rw["mode_mass"], rw["unrepresented"]], -1),
    }
    return build_inference_data(
        z=z,
        log_weight=log_w.reshape(n, c, s).permute(1, 2, 0),
        x=x,
        log_px=rw["log_px"],
        log_px_stderr=rw["log_px_stderr"],
        mean=mean,
        cov=cov,
        diagnostics=diagnostics,
        attrs=attrs or {"method": "nuts"},
        diverging=diverging,
        lp=lp,
    )
