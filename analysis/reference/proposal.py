r"""The importance proposal of the re-weighting (:mod:`pyrofail.analysis.reference.reweight`).

Per point, a defensive mixture (Hesterberg 1995; Owen & Zhou 2000)

.. math::

    q(z) = (1 - \alpha) \sum_m \pi_m q_m(z) + \alpha\, \mathcal N(0, I), \qquad
    q_m(z) = \beta\, t_4\big(z; \bar z_m, \hat\Sigma_m\big)
        + (1 - \beta - \lambda_m) \frac1J \sum_{j=1}^{J} \mathcal N\big(z; z_{m,j}, h^2 \hat\Sigma_m\big)
        + \frac{\lambda_m}{|A_m|} \sum_{a \in A_m} t_4\big(z; z^*_a, H_a^{-1}\big),

for every mode ``m`` of the draws a Student-t on its mean and covariance, a kernel mixture on
``J`` of its draws (Silverman's :math:`h`) and a Student-t on the Laplace approximation of every
local maximum :math:`z^*_a` the mode holds; a maximum no mode holds is a group of its own,
:math:`q_m = t_4(z; z^*_a, H_a^{-1})`. The group weights :math:`\pi_m` are the Laplace
approximations of the modes' masses mixed with equal weights. The module docstring of
:mod:`pyrofail.analysis.reference.reweight` says how the weights are used.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from pyrofail.analysis.reference.maxima import Maxima

__all__ = ["Proposal", "t_draw"]

STUDENT_DF = 4.0
STUDENT_WEIGHT = 0.2  # of the Student-t components, within a mode's share of the proposal
LAPLACE_WEIGHT = 0.1  # of the Laplace components of the maxima a mode holds, within its share
FLOOR = 0.2  # share of the mode weights spread equally over the modes
KERNELS = 64  # kernels per mode and latent dimension in the importance proposal


def t_draw(loc, tril, eps, chi2):
    """Student-t draws (``STUDENT_DF`` degrees of freedom) from normals ``eps`` and chi-squares
    ``chi2``."""
    return loc + torch.sqrt(STUDENT_DF / chi2)[..., None] * (tril @ eps[..., None])[..., 0]


class Proposal:
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
        t_sample = t_draw(self.loc[rows, mode], self.tril[rows, mode], eps, chi2)
        j = torch.randint(self.reps.shape[2], (m, n), generator=gen)
        shaped = (self.tril[rows, mode] @ eps[..., None])[..., 0]
        kde_draw = self.reps[rows, mode, j] + self.h * shaped
        out = torch.where((comp < g)[..., None], t_sample, kde_draw)
        if j_max:
            mx = (comp - 2 * g).clamp(0, j_max - 1)
            lap_draw = t_draw(self.maxima.z[rows, mx], self.maxima.tril[rows, mx], eps, chi2)
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
