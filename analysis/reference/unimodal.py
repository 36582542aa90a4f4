r"""The cheap path of the NUTS reference: importance sampling where the posterior has one mode.

A point whose maxima search (:mod:`pyrofail.analysis.reference.maxima`) finds one maximum
:math:`z^*` holding all but ``start_share`` of the Laplace mass (:func:`candidates`) needs no
chain when its posterior is close enough to a Student-t for importance sampling to be
efficient. Two rounds of ``num_importance`` draws each (adaptive importance sampling, Cappé,
Guillin, Marin & Robert 2004): first the defensive mixture (Hesterberg 1995)

.. math::

    q_1(z) = (1 - \alpha) \sum_j \pi_j\, t_4\big(z; z^*_j, H_j^{-1}\big) + \alpha\, \mathcal N(0, I),

over the point's maxima :math:`z^*_j` (the light ones too), :math:`\pi_j = 0.8\,` share
:math:`+\, 0.2 / J` (:func:`laplace_mixture`); then :math:`q_2` (:func:`adapted`), with most
of the non-prior weight moved to a :math:`t_4` with the mean and covariance of the first
round's weighted draws and some to Gaussian kernels on those draws. From :math:`q_2`'s draws, with weights
:math:`w_s = p(x, z_s) / q_2(z_s)` Pareto-smoothed (Vehtari et al. 2024), the point passes
(:func:`assess`, :func:`try_points`) when all of these hold:

* :math:`\hat k \le 0.5`: the weights have a finite variance (Vehtari et al. 2024, §3);
* the efficiency :math:`\mathrm{ESS}/S = 1 / (S \sum_s \tilde w_s^2) \ge 0.5`, so that the
  stored draws keep an effective sample size of half their number;
* the standard error of :math:`\log p(x)` is at most the quality gate's 0.02 nats;
* at most 0.002 of the weight lies on draws where the prior component dominates :math:`q_2` and
  the way up to a maximum dips (``missing_mass``, as :mod:`pyrofail.analysis.reference.reweight`
  counts it: mass no maximum explains);
* no *cliff*: no draw of either round inside the 99.9% Laplace ball of :math:`z^*` lies more
  than 1,000 nats below the Laplace approximation's :math:`\log p(x, z^*) - \tfrac12 d^2`
  (or has no finite density). A drop that large over the ball is what makes Pyro's NUTS declare
  a divergence (an energy error above 1,000), by which the chains find a needle at a cliff
  (:func:`pyrofail.analysis.reference.maxima.along_segments`); importance draws never land in
  such a needle, so the point goes to the chains. Smooth departures from the Laplace
  approximation (tens of nats at the ball's edge for a fitted decoder) do not count.

A point that fails any check is sampled by NUTS as before. A point that passes stores
``C`` :math:`\times` ``S`` further independent draws of :math:`q_2` with their smoothed,
normalised weights (:func:`draws`); :math:`\log p(x)`, its standard error and :math:`\hat k`
come from the ``num_importance`` draws of :math:`q_2`. Its diagnostics: ``ess`` the stored
weights' effective sample size, ``rhat`` and ``rhat_within_modes`` of the stored draws taken
as ``C`` chains (independent draws: near 1), no divergences, no unrepresented mass, one mode of
mass ``1 - missing_mass``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from scipy.stats import chi2 as chi2_dist

from pyrofail.analysis.reference import stats
from pyrofail.analysis.reference.idata import arviz
from pyrofail.analysis.reference.maxima import Maxima, PerPoint, log_joint_chunked
from pyrofail.analysis.reference.modes import MIN_MASS
from pyrofail.analysis.reference.quality import LOG_PX_SE_MAX
from pyrofail.analysis.reference.reweight import _basin_of_draws

__all__ = ["Mixture", "Quick", "adapted", "assess", "candidates", "draws", "laplace_mixture", "try_points"]

MAX_K_HAT = 0.5
MIN_EFFICIENCY = 0.5
MAX_SE = LOG_PX_SE_MAX  # the quality gate's
MAX_MISSING = 0.002
CLIFF = 1000.0  # nats below the Laplace approximation inside its ball: Pyro NUTS's divergence
BALL = 0.999  # quantile of the Laplace ball for the cliff check
DF = 4.0
KERNELS = 128  # Gaussian kernels of the second proposal
SHARES = (0.15, 0.7, 0.15)  # of q_2's non-prior weight: Laplace t's, moment-matched t, kernels


def candidates(maxima: Maxima, start_share: float) -> torch.Tensor:
    """``(N,)``: true where one valid maximum holds at least ``1 - start_share`` of the Laplace
    mass, i.e. where starting by mass would put every chain at one maximum."""
    big = maxima.valid & (maxima.shares() >= start_share)
    return big.sum(-1) == 1


@dataclass
class Mixture(PerPoint):
    r"""A defensive mixture per point: Student-t's :math:`t_4(z; \text{loc}_j, L_j L_j^\top)`
    ``(N, J)``, a Gaussian kernel mixture :math:`\frac1R \sum_r \mathcal N(z; \text{reps}_r,
    B B^\top)` on ``reps`` ``(N, R, K)`` with ``bandwidth`` :math:`B` ``(N, K, K)`` (``R = 0``:
    none), and the prior :math:`\mathcal N(0, I)`, weighted by ``log_mix`` ``(N, J + 2)`` in that
    order."""

    loc: torch.Tensor
    tril: torch.Tensor
    reps: torch.Tensor
    bandwidth: torch.Tensor
    log_mix: torch.Tensor

    def sample(self, m: int, gen: torch.Generator) -> torch.Tensor:
        """``m`` draws ``(M, N, K)``."""
        n, j, k = self.loc.shape
        comp = torch.multinomial(self.log_mix.exp().float(), m, replacement=True, generator=gen).T  # (M, N)
        eps = torch.randn(m, n, k, generator=gen, dtype=self.loc.dtype)
        chi2 = torch.randn(m, n, int(DF), generator=gen, dtype=self.loc.dtype).pow(2).sum(-1)
        rows = torch.arange(n).expand(m, n)
        pick = comp.clamp_max(j - 1)
        out = (
            self.loc[rows, pick]
            + (DF / chi2).sqrt()[..., None] * (self.tril[rows, pick] @ eps[..., None])[..., 0]
        )
        if self.reps.shape[1]:
            r = torch.randint(self.reps.shape[1], (m, n), generator=gen)
            kernel = self.reps[rows, r] + (self.bandwidth[rows] @ eps[..., None])[..., 0]
            out = torch.where((comp == j)[..., None], kernel, out)
        return torch.where((comp == j + 1)[..., None], eps, out)

    def log_parts(self, z: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """The weighted log densities of the components at ``z`` ``(M, N, K)``: ``(M, N, J + 2)``
        (the kernels summed into one)."""
        m, n, k = z.shape
        lt = dist.MultivariateStudentT(torch.tensor(DF, dtype=z.dtype), self.loc, scale_tril=self.tril)
        lp0 = -0.5 * (z * z).sum(-1, keepdim=True) - 0.5 * k * math.log(2 * math.pi)
        lk = torch.full((m, n, 1), -math.inf, dtype=z.dtype)
        r = self.reps.shape[1]
        for i in range(0, n if r else 0, chunk):  # bounds the memory at (chunk, M, R)
            sl = slice(i, i + chunk)
            centre = self.reps[sl].mean(1, keepdim=True)  # whitened about the kernels' centre
            zw = torch.linalg.solve_triangular(
                self.bandwidth[sl], (z[:, sl] - centre.transpose(0, 1)).permute(1, 2, 0), upper=False
            )
            rw = torch.linalg.solve_triangular(
                self.bandwidth[sl], (self.reps[sl] - centre).transpose(1, 2), upper=False
            )
            d2 = torch.cdist(zw.transpose(1, 2), rw.transpose(1, 2)).square_()  # (n, M, R)
            log_det = self.bandwidth[sl].diagonal(dim1=-2, dim2=-1).log().sum(-1)
            lse = (
                torch.logsumexp(d2.mul_(-0.5), -1)
                - math.log(r)
                - log_det[:, None]
                - 0.5 * k * math.log(2 * math.pi)
            )
            lk[:, sl, 0] = lse.T
        return torch.cat([lt.log_prob(z[:, :, None, :]), lk, lp0], -1) + self.log_mix


def laplace_mixture(maxima: Maxima, defensive: float) -> Mixture:
    """The first proposal: a Student-t on every maximum's Laplace approximation, weighted
    0.8 share + 0.2 / J, and the prior with weight ``defensive``."""
    n, _, k = maxima.z.shape
    share = maxima.shares()
    mix = torch.where(maxima.valid, 0.8 * share + 0.2 / maxima.valid.sum(-1, keepdim=True), 0.0)
    prior = torch.full((n, 1), math.log(defensive) if defensive > 0 else -math.inf, dtype=mix.dtype)
    no_kernels = torch.full((n, 1), -math.inf, dtype=mix.dtype)
    log_mix = torch.cat([(mix * (1 - defensive)).log(), no_kernels, prior], -1)
    eye = torch.eye(k, dtype=mix.dtype).expand(n, k, k)
    return Mixture(maxima.z, maxima.tril, maxima.z.new_zeros(n, 0, k), eye, log_mix)


def adapted(first: Mixture, z: torch.Tensor, w: torch.Tensor, gen: torch.Generator) -> Mixture:
    """The second proposal, from the first round's weighted draws ``z`` ``(M, N, K)``, ``w``
    ``(M, N)`` (one step of adaptive importance sampling: Cappé et al. 2004): of the non-prior
    weight (:data:`SHARES`), 0.15 stays on the first's Student-t's, 0.7 goes to a Student-t with
    the draws' mean and covariance, and 0.15 to Gaussian kernels on :data:`KERNELS` of the draws
    resampled by weight, with that covariance times Silverman's factor, which follow a curved or
    skewed posterior that no single Student-t fits. (Measured on the 300 stage points of a fitted
    K = 3 IWAE decoder of figure8: 279 pass with these shares, 112 with half on the Laplace
    Student-t's and half on the moment-matched one, 214 with a quarter, a quarter and half on the
    kernels, whose light tails then make :math:`\\hat k` large.)"""
    m, n, k = z.shape
    mean = (w[..., None] * z).sum(0)  # (N, K)
    dev = z - mean
    cov = torch.einsum("mn,mnk,mnl->nkl", w, dev, dev)
    eye = torch.eye(k, dtype=z.dtype)
    tril, info = torch.linalg.cholesky_ex(
        cov + 1e-12 * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye
    )
    tril = torch.where((info == 0)[:, None, None], tril, first.tril[:, 0])  # degenerate: the best maximum's
    pick = torch.multinomial(w.T.float() + 1e-30, KERNELS, replacement=True, generator=gen)  # (N, R)
    reps = z.transpose(0, 1).gather(1, pick[..., None].expand(-1, -1, k))
    h = (4.0 / ((k + 2) * KERNELS)) ** (1.0 / (k + 4))  # Silverman's rule
    body = torch.logsumexp(first.log_mix[:, :-2], -1, keepdim=True)
    log_mix = torch.cat(
        [
            first.log_mix[:, :-2] + math.log(SHARES[0]),
            body + math.log(SHARES[1]),
            body + math.log(SHARES[2]),
            first.log_mix[:, -1:],
        ],
        -1,
    )
    t_scale = tril * math.sqrt((DF - 2) / DF)  # a t_4 of this scale has the draws' covariance
    return Mixture(
        torch.cat([first.loc, mean[:, None]], 1),
        torch.cat([first.tril, t_scale[:, None]], 1),
        reps,
        h * tril,
        log_mix,
    )


@dataclass
class Quick(PerPoint):
    """The points that passed (:func:`try_points`): their indices ``rows`` ``(A,)``, the final
    proposal ``mixture`` and per point ``log_px``, ``log_px_stderr``, ``pareto_k``,
    ``missing_mass``, ``efficiency``."""

    rows: torch.Tensor
    mixture: Mixture
    log_px: torch.Tensor
    log_px_stderr: torch.Tensor
    pareto_k: torch.Tensor
    missing_mass: torch.Tensor
    efficiency: torch.Tensor


def _log_joint(model, z, x) -> torch.Tensor:
    lp = log_joint_chunked(model, z, x)
    return torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf))


def _psis(lw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pareto-smoothed normalised weights ``(M, N)`` and :math:`\\hat k` ``(N,)`` of ``lw``."""
    with warnings.catch_warnings():
        # psislw warns when a tail is too short to fit a Pareto; k is then inf, which fails
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        smoothed, k_hat = arviz().psislw(lw.T.numpy().copy())
    w = torch.softmax(torch.from_numpy(np.asarray(smoothed)).to(lw.dtype), -1).T
    return w, torch.from_numpy(np.asarray(k_hat, dtype=np.float64)).reshape(-1)


def _weights(model, x, mixture: Mixture, m: int, gen):
    """``m`` draws of ``mixture``, their :math:`\\log p(x, z)`, component densities and log weights."""
    z = mixture.sample(m, gen)
    parts = mixture.log_parts(z)
    lj = _log_joint(model, z, x)
    lw = lj - torch.logsumexp(parts, -1)
    return z, lj, parts, torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -math.inf))


def _cliff(maxima: Maxima, z: torch.Tensor, lj: torch.Tensor) -> torch.Tensor:
    """``(N,)``: a draw inside the heaviest maximum's 99.9% Laplace ball lies more than
    :data:`CLIFF` nats below the Laplace approximation (or has no finite density)."""
    n, _, k = maxima.z.shape
    top, idx = maxima.shares().argmax(-1), torch.arange(n)
    diff = (z - maxima.z[idx, top]).permute(1, 2, 0)  # (N, K, M)
    d2 = torch.linalg.solve_triangular(maxima.tril[idx, top], diff, upper=False).square().sum(1).T  # (M, N)
    below = maxima.log_joint[idx, top] - 0.5 * d2 - lj
    # NaN compares false: a NaN or -inf density inside the ball is a cliff
    return ((d2 <= float(chi2_dist.ppf(BALL, k))) & ~(below <= CLIFF)).any(0)


@torch.no_grad()
def assess(model, x, maxima: Maxima, rows: torch.Tensor, *, num_importance: int, defensive: float, seed: int):
    """Importance sampling at the points ``rows`` (module docstring): ``(quick, failed)``, a
    :class:`Quick` of all of them and per check (``"pareto_k"``, ``"efficiency"``,
    ``"log_px_stderr"``, ``"missing_mass"``, ``"cliff"``) whether each point fails it ``(R,)``."""
    mx, xr = maxima[rows], x[rows]
    n, j, k = mx.z.shape
    gen = torch.Generator().manual_seed(int(seed) + 31)
    first = laplace_mixture(mx, defensive)
    z1, lj1, _, lw1 = _weights(model, xr, first, num_importance, gen)
    mixture = adapted(first, z1, _psis(lw1)[0], gen)
    z, lj, parts, lw = _weights(model, xr, mixture, num_importance, gen)
    log_px = torch.logsumexp(lw, 0) - math.log(num_importance)
    rel = torch.expm1(torch.logsumexp(2 * lw, 0) - math.log(num_importance) - 2 * log_px).clamp_min(0)
    se = (rel / num_importance).sqrt()
    w, k_hat = _psis(lw)
    efficiency = 1.0 / (num_importance * w.square().sum(0))
    # mass no maximum explains: the prior component dominates and the way up to a maximum dips
    outside = torch.softmax(parts, -1)[..., -1] > 0.5
    centres = torch.where(mx.valid[..., None], mx.z, mx.z[:, :1])  # invalid slots: the best maximum
    basin = _basin_of_draws(model, xr, z, lj, centres, torch.zeros(n, j, dtype=torch.long), outside)
    missing = (w * (outside & (basin < 0))).sum(0)
    # NaN compares false: an unknown value fails its check
    failed = {
        "pareto_k": ~(k_hat <= MAX_K_HAT),
        "efficiency": ~(efficiency >= MIN_EFFICIENCY),
        "log_px_stderr": ~(se <= MAX_SE) | ~torch.isfinite(log_px),
        "missing_mass": ~(missing <= MAX_MISSING),
        "cliff": _cliff(mx, z1, lj1) | _cliff(mx, z, lj),
    }
    return Quick(rows, mixture, log_px, se, k_hat, missing, efficiency), failed


def try_points(model, x, maxima: Maxima, rows: torch.Tensor, **options):
    """:func:`assess` the points ``rows``: a :class:`Quick` of those that pass every check, or
    ``None`` when none does."""
    quick, failed = assess(model, x, maxima, rows, **options)
    ok = ~torch.stack(list(failed.values())).any(0)
    return quick[ok] if bool(ok.any()) else None


@torch.no_grad()
def draws(model, x, quick: Quick, chains: int, per_chain: int, *, seed: int):
    """The stored draws of the points that passed: ``(z, lp, log_w, diagnostics)`` with
    ``z`` ``(C, S, A, K)``, ``lp`` ``(C, S, A)``, ``log_w`` ``(A, C S)`` (chains concatenated,
    normalised) and the per-point diagnostics of the reference layout (module docstring)."""
    xr = x[quick.rows]
    a, _, k = quick.mixture.loc.shape
    gen = torch.Generator().manual_seed(int(seed) + 37)
    z, lj, _, lw = _weights(model, xr, quick.mixture, chains * per_chain, gen)  # (M, A, K), (M, A)
    w, _ = _psis(lw)
    z = z.reshape(chains, per_chain, a, k)
    zc = z.permute(2, 3, 0, 1).double()  # (A, K, C, S)
    rhat = stats.rhat(zc).amax(-1)
    mass = 1.0 - quick.missing_mass
    diagnostics = {
        "rhat": rhat,
        "rhat_within_modes": rhat,
        "ess": 1.0 / w.square().sum(0),
        "divergences": torch.zeros(a, dtype=torch.float64),
        "pareto_k": quick.pareto_k,
        "missing_mass": quick.missing_mass,
        "unrepresented_mass": torch.zeros(a, dtype=torch.float64),
        "num_modes": (mass >= MIN_MASS).double(),
        "mode_mass": mass[:, None],
    }
    log_w = w.clamp_min(1e-300).log().T  # (A, M): chain-major, as the draws
    return z, lj.reshape(chains, per_chain, a), torch.log_softmax(log_w, -1), diagnostics
