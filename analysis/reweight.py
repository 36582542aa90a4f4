r"""Re-weighting MCMC draws so that every mode has its posterior mass, and :math:`\log p(x)`.

**Re-weighting.** A chain does not cross between well separated modes, so the pooled draws
put mass on modes in proportion to the number of chains that found them, not to the modes'
posterior masses. So the modes are found first, on the pooled draws and with the posterior's
own density (:func:`pyrofail.analysis.modes.find_modes` with ``log_density``), and every
mode's mass :math:`P_m` is estimated by importance sampling (defensive mixtures: Hesterberg
1995, Owen & Zhou 2000; Pareto smoothing: Vehtari et al. 2024) with, per point, the proposal

.. math::

    q(z) = \sum_m \pi_m \Big[\beta\, t_4\big(z; \bar z_m, \hat\Sigma_m\big)
        + (1 - \beta - \alpha) \frac1J \sum_{j=1}^{J} \mathcal N\big(z; z_{m,j}, h^2 \hat\Sigma_m\big)\Big]
        + \alpha\, \mathcal N(0, I),

a Student-t and a kernel mixture on ``J`` of the mode's draws (Silverman's :math:`h`) for every
mode, with mode weights :math:`\pi_m` from the Laplace approximation of the modes' masses
(mixed with equal weights), and the prior as a defensive component (``defensive`` =
:math:`\alpha`). With ``num_importance`` draws :math:`z_s \sim q` and weights
:math:`w_s = p(x, z_s) / q(z_s)`:

* :math:`\log p(x) = \log \frac1S \sum_s w_s`, with the delta-method standard error
  :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/S}`;
* :math:`P_m = \sum_s \tilde w_s\, r_m(z_s)`, with :math:`\tilde w` the Pareto-smoothed
  normalised weights (``arviz.psislw``) and :math:`r_m` the share of mode ``m``'s components
  in the proposal density at :math:`z_s`;
* every NUTS draw in mode ``m`` weighs :math:`P_m / S_m`, :math:`S_m` the number of pooled
  draws in it (``sample_stats.log_weight``): within a mode the draws of every chain sample
  the posterior restricted to that mode, whichever chain they come from, so the weighted
  draws follow the posterior with the right mode masses even when a chain crosses now and then.

``missing_mass`` is the weighted mass of importance draws where the prior component dominates
the proposal: posterior mass that no chain found. A Pareto :math:`\hat k` (``pareto_k``) above
0.7 says the weights, and so :math:`\log p(x)` and the mode masses, are unreliable there.

**Diagnostics** per point (``diagnostics`` group): ``rhat``, the rank-normalised split
:math:`\hat R` (Vehtari et al. 2021), the larger of bulk and tail, largest over latents: over
all chains, or, where that is larger, within each mode over the chains' draws in it (chains in
different modes differ by design), largest over modes; ``ess``,
:math:`1 / \sum_m P_m^2 / \mathrm{ESS}_m`, with :math:`\mathrm{ESS}_m` the sum over chains of
their bulk ESS (of the draws less their mode's mean) times the fraction of their draws in mode
``m``; ``divergences``, divergent transitions of the point's chains after warm-up (a divergent
joint trajectory is charged to the sub-problems whose own energy error explains it);
``pareto_k``; ``missing_mass``; ``num_modes``; ``mode_mass`` :math:`P_m`. :mod:`pyrofail.analysis.stats`
computes them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro.distributions as dist
import torch

from pyrofail.analysis import stats
from pyrofail.analysis.modes import assign, find_modes
from pyrofail.analysis.reference_data import arviz, build_inference_data

__all__ = ["from_draws", "mode_masses_by_importance"]

STUDENT_DF = 4.0
STUDENT_WEIGHT = 0.2  # of the Student-t components in the importance proposal
FLOOR = 0.2  # share of the mode weights spread equally over the modes
KERNELS = 64  # kernels per mode and latent dimension in the importance proposal


class _Proposal:
    r"""The importance proposal of one chunk of points: per mode ``g`` of each point, a
    Student-t (``t``) and a Gaussian kernel mixture on ``J = 64 K`` (at most 256) of the mode's
    draws (``kde``, with the mode's covariance times Silverman's factor), and the prior. Weights:
    ``student`` and ``1 - student - defensive``, each shared among the point's modes by their
    Laplace masses (mixed with equal shares), and ``defensive`` for the prior.
    """

    def __init__(self, pooled, lab, lp, n_modes: int, defensive: float, student: float, gen, kernels=None):
        n, t, k = pooled.shape
        dtype = pooled.dtype
        kernels = kernels or min(256, KERNELS * k)  # more kernels in more dimensions
        onehot = torch.nn.functional.one_hot(lab, n_modes).to(dtype)  # (N, T, G)
        cnt = onehot.sum(1)  # (N, G)
        loc = torch.einsum("ntg,ntk->ngk", onehot, pooled) / cnt.clamp_min(1)[..., None]
        dev = pooled[:, None] - loc[:, :, None]  # (N, G, T, K)
        cov = torch.einsum("ntg,ngtk,ngtl->ngkl", onehot, dev, dev) / (cnt - 1).clamp_min(1)[..., None, None]
        eye = torch.eye(k, dtype=dtype)
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
        cov = torch.where((cnt >= k + 2)[..., None, None], cov, scale[..., None, None] * eye)
        cov = cov + 1e-6 * scale[..., None, None] * eye + 1e-12 * eye
        self.loc, self.tril = loc, torch.linalg.cholesky(cov)
        self.log_det = self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (N, G)
        # J kernel centres per mode, drawn uniformly from the mode's draws
        member = onehot.transpose(1, 2).reshape(n * n_modes, t) + 1e-30  # absent modes: any draw
        pick = torch.multinomial(member, kernels, replacement=True, generator=gen).reshape(n, -1)
        self.reps = pooled.gather(1, pick[..., None].expand(-1, -1, k)).reshape(n, n_modes, kernels, k)
        self.h = (4.0 / ((k + 2) * kernels)) ** (1.0 / (k + 4))  # Silverman's rule
        # mode weights: the Laplace approximation of each mode's mass, p(x, z_max) |2 pi Sigma|^(1/2),
        # mixed with equal weights (FLOOR) so that no mode the chains found is left uncovered
        present = cnt > 0
        g = present.sum(-1, keepdim=True).to(dtype)
        top = torch.full_like(cnt, -math.inf).scatter_reduce_(1, lab, lp, "amax")
        laplace = torch.softmax(torch.where(present, top + self.log_det, torch.full_like(top, -math.inf)), -1)
        mode_w = torch.where(present, (1 - FLOOR) * laplace + FLOOR / g, torch.zeros_like(laplace))
        log_mode = mode_w.log()  # -inf where absent
        kde = 1.0 - student - defensive
        self.log_mix = torch.cat(
            [
                log_mode + (math.log(student) if student > 0 else -math.inf),
                log_mode + (math.log(kde) if kde > 0 else -math.inf),
                torch.full((n, 1), math.log(defensive) if defensive > 0 else -math.inf, dtype=dtype),
            ],
            -1,
        )  # (N, 2G + 1)
        self.n_modes = n_modes

    def sample(self, m: int, gen: torch.Generator) -> torch.Tensor:
        n, g, k = self.loc.shape
        comp = torch.multinomial(
            torch.softmax(self.log_mix, -1).float(), m, replacement=True, generator=gen
        ).T
        eps = torch.randn(m, n, k, generator=gen, dtype=self.loc.dtype)
        # a chi-square variate with STUDENT_DF = 4 degrees of freedom is a sum of 4 squared normals
        chi2 = torch.randn(m, n, int(STUDENT_DF), generator=gen, dtype=self.loc.dtype).pow(2).sum(-1)
        mode = torch.where(comp < g, comp, comp - g).clamp_max(g - 1)  # (M, N)
        rows = torch.arange(n).expand(m, n)
        shaped = (self.tril[rows, mode] @ eps[..., None])[..., 0]
        t_draw = self.loc[rows, mode] + torch.sqrt(STUDENT_DF / chi2)[..., None] * shaped
        j = torch.randint(self.reps.shape[2], (m, n), generator=gen)
        kde_draw = self.reps[rows, mode, j] + self.h * shaped
        out = torch.where((comp < g)[..., None], t_draw, kde_draw)
        return torch.where((comp == 2 * g)[..., None], eps, out)

    def log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Weighted log densities of every component at ``z`` ``(M, N, K)``: ``(M, N, 2G + 1)``."""
        m, n, k = z.shape
        t = dist.MultivariateStudentT(torch.tensor(STUDENT_DF, dtype=z.dtype), self.loc, scale_tril=self.tril)
        lt = t.log_prob(z[:, :, None, :])  # (M, N, G)
        lk = []
        for g in range(self.n_modes):  # whiten by the mode's covariance, then distances to its kernels
            tril = self.tril[:, g]  # (N, K, K)
            zw = torch.linalg.solve_triangular(tril, z.permute(1, 2, 0), upper=False)  # (N, K, M)
            rw = torch.linalg.solve_triangular(tril, self.reps[:, g].transpose(1, 2), upper=False)
            # kernel sums in single precision: relative error ~1e-7, far below the Monte Carlo error
            d2 = torch.cdist(zw.transpose(1, 2).float(), rw.transpose(1, 2).float()).square_()  # (N, M, J)
            lse = torch.logsumexp(d2.mul_(-0.5 / self.h**2), -1).to(z.dtype)
            lk.append(lse - math.log(self.reps.shape[2]) - k * math.log(self.h) - self.log_det[:, g, None])
        lk = torch.stack(lk, -1).transpose(0, 1) - 0.5 * k * math.log(2 * math.pi)  # (M, N, G)
        lp = -0.5 * (z * z).sum(-1, keepdim=True) - 0.5 * k * math.log(2 * math.pi)
        return torch.cat([lt, lk, lp], -1) + self.log_mix


def mode_masses_by_importance(
    model,
    x: torch.Tensor,
    pooled: torch.Tensor,
    lp: torch.Tensor,
    lab: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_importance: int = 4000,
    defensive: float = 0.1,
    seed: int = 0,
) -> dict:
    r"""Mode masses, :math:`\log p(x)` and PSIS diagnostics (module docstring) for draws
    ``pooled`` ``(N, T, K)`` with log densities ``lp`` ``(N, T)`` and modes ``lab`` ``(N, T)``, the
    modes being
    ``(centres, labels)`` of :func:`pyrofail.analysis.modes.find_modes`."""
    az = arviz()
    n_modes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(int(seed) + 1)
    proposal = _Proposal(pooled, lab, lp, n_modes, defensive, STUDENT_WEIGHT, gen)
    zs = proposal.sample(num_importance, gen)  # (M, N, K)
    comp = proposal.log_probs(zs)  # (M, N, 2G+1)
    with torch.no_grad():
        lw = model.log_joint(zs, x) - torch.logsumexp(comp, -1)  # (M, N)
    lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -math.inf))
    lse1, lse2 = torch.logsumexp(lw, 0), torch.logsumexp(2 * lw, 0)
    log_px = lse1 - math.log(num_importance)
    rel = torch.expm1(lse2 - math.log(num_importance) - 2 * log_px).clamp_min(0)
    with warnings.catch_warnings():
        # psislw warns when a tail is too short to fit a Pareto; k is then inf, which we report
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        smoothed, pareto_k = az.psislw(lw.T.numpy().copy())
    w = torch.softmax(torch.from_numpy(np.asarray(smoothed)).to(lw.dtype), -1)  # (N, M)
    # each importance draw belongs to the modes in proportion to their components' densities
    g = n_modes
    per_mode = torch.logaddexp(comp[..., :g], comp[..., g : 2 * g])  # (M, N, G)
    resp = torch.softmax(per_mode, -1).nan_to_num(0.0)
    mass = torch.einsum("nm,mng->ng", w, resp)
    return {
        "mode_mass": mass,
        "missing_mass": (w.T * (torch.softmax(comp, -1)[..., -1] > 0.5)).sum(0),
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
):
    r"""The reference layout (:mod:`pyrofail.analysis.reference`) from MCMC draws ``z``
    ``(C, S, N, K)`` of any sampler: modes, re-weighting, :math:`\log p(x)`, moments and
    diagnostics as in the module docstring."""
    c, s, n, k = z.shape
    z = z.to(x.dtype)
    lp = _log_joint_chunked(model, z, x, budget)  # (C, S, N)
    pooled = z.permute(2, 0, 1, 3).reshape(n, c * s, k)
    lp_pooled = lp.permute(2, 0, 1).reshape(n, c * s)
    centres, labels = find_modes(pooled, log_density=lp_pooled, seed=seed)
    lab = assign(pooled, centres, labels)  # (N, CS)
    n_modes = int(labels.max()) + 1
    per = max(1, budget // num_importance)
    parts = [
        mode_masses_by_importance(
            model, x[i], pooled[i], lp_pooled[i], lab[i], centres[i], labels[i],
            num_importance=num_importance, defensive=defensive, seed=seed + j,
        )
        for j, i in enumerate(_chunks(n, per))
    ]  # fmt: skip
    for p in parts:
        p["mode_mass"] = torch.nn.functional.pad(p["mode_mass"], (0, n_modes - p["mode_mass"].shape[1]))
    rw = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    # every draw of mode m weighs P_m / (number of draws in m)
    ones = torch.ones_like(lab, dtype=torch.float64)
    count = torch.zeros(n, n_modes, dtype=torch.float64).scatter_add_(1, lab, ones)
    log_w = (rw["mode_mass"].log() - count.clamp_min(1).log()).gather(1, lab)  # (N, CS)
    log_w = torch.log_softmax(log_w, -1)
    w = log_w.exp()
    mean = (w[..., None] * pooled.double()).sum(1)
    dev = pooled.double() - mean[:, None]
    cov = torch.einsum("ns,nsk,nsl->nkl", w, dev, dev)
    # diagnostics: R-hat over all chains, or within modes where chains sit in different ones
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
    r_hat = torch.fmin(stats.rhat(zc).amax(-1), within)
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
    point_ess = 1.0 / (rw["mode_mass"].pow(2) / mode_ess.clamp_min(1e-12)).sum(-1)
    if diverging is None:
        diverging = torch.zeros(c, s, n, dtype=torch.bool)
    diagnostics = {
        "rhat": r_hat,
        "ess": point_ess,
        "divergences": diverging.sum((0, 1)).double(),
        "pareto_k": rw["pareto_k"],
        "missing_mass": rw["missing_mass"],
        "num_modes": labels.amax(-1).double() + 1,
        "mode_mass": rw["mode_mass"],
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
