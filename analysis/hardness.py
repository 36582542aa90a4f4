r"""How hard a posterior is for a mean-field Gaussian: KL*, the best one's reverse KL.

.. math::

    \mathrm{KL}^*(x) = \min_{\mu, s}\ \mathrm{KL}\big(\mathcal N(\mu, \operatorname{diag} s^2)
        \,\|\, p(z \mid x)\big)
      = \min_{\mu, s}\ \log p(x) - \mathbb H[q] - \mathbb E_q[\log p(x, z)],

the posterior-matching cost that even a perfect, non-amortized mean-field encoder pays at
:math:`x` (condition Cx1 of Yacoby, Pan & Doshi-Velez 2020, arXiv:2007.07124, asks for how many
:math:`x` it is large). A posterior is *hard* when :math:`\mathrm{KL}^* >` :data:`HARD_KL`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from pyrofail import memory
from pyrofail.analysis.reference import idata as reference_data
from pyrofail.analysis.reference import reference_posterior
from pyrofail.analysis.reference.grid import feature_sigma
from pyrofail.analysis.reference.modes import reference_modes

__all__ = ["HARD_KL", "best_mean_field"]

# A posterior is "hard for a mean-field Gaussian" when the best one is farther than this from
# it: -log(0.9) is the KL(q || p) of a Gaussian that fits one mode exactly and misses the
# other 10% of the posterior mass, since KL(p1 || 0.9 p1 + 0.1 p2) = -log 0.9.
HARD_KL = -math.log(0.9)
# Gauss-Hermite nodes per latent dimension for E_q[log p(x, z)] in best_mean_field.
GH_NODES = {1: 48, 2: 16}
# Adam steps of the per-point optimisation (deterministic: quadrature, no sampling).
BEST_STEPS = 300
# Starting points per data point: the heaviest reference modes and the moment-matched Gaussian.
BEST_INITS = 4


def _gauss_hermite(k: int, n: int, dtype=torch.float64):
    """Nodes ``(G, K)`` and weights ``(G,)`` of the tensor-product rule for E over N(0, I_K)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)  # weight exp(-t^2 / 2)
    t, w = torch.tensor(t, dtype=dtype), torch.tensor(w / w.sum(), dtype=dtype)
    nodes = torch.cartesian_prod(*([t] * k)).reshape(-1, k)
    weights = torch.cartesian_prod(*([w] * k)).reshape(-1, k).prod(-1)
    return nodes, weights


def _device(model) -> torch.device:
    """Where a model's tensors live (the CPU for one without any)."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


class _LogJoint:
    r""":math:`\log p(x, z)` of a latent-Gaussian model with :math:`f` tabulated once on a
    regular grid of :math:`z` (K ≤ 2) and interpolated (linearly, bilinearly): the decoder runs
    once for all points and all optimisation steps. Other models use ``log_joint``."""

    SIZE = {1: 8193, 2: 513}

    def __init__(self, model, radius: float = 8.0):
        self.model = model
        k = model.latent_dim
        self.tabulated = hasattr(model, "mean") and hasattr(model, "noise_scale") and k in self.SIZE
        if not self.tabulated:
            return
        m = self.SIZE[k]
        self.k, self.m, self.lo = k, m, -radius
        self.h = 2 * radius / (m - 1)
        axis = torch.linspace(-radius, radius, m, dtype=torch.float64, device=_device(model))
        z = torch.cartesian_prod(*([axis] * k)).reshape(-1, k)
        with torch.no_grad():
            f = torch.cat([model.mean(z[i : i + 2**16]) for i in range(0, z.shape[0], 2**16)])
        self.f = f.reshape(*([m] * k), -1)
        self.sigma = feature_sigma(model, torch.float64, f.device)  # (D,): shared or per feature
        self.log_norm = float(self.sigma.log().sum())
        self.d = model.data_dim

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        u = ((z - self.lo) / self.h).clamp(0, self.m - 1 - 1e-9)
        i = u.detach().floor().long()
        a = u - i
        if self.k == 1:
            i0 = i[..., 0]
            return self.f[i0] * (1 - a) + self.f[i0 + 1] * a
        i0, i1 = i[..., 0], i[..., 1]
        a0, a1 = a[..., :1], a[..., 1:]
        return (
            self.f[i0, i1] * (1 - a0) * (1 - a1)
            + self.f[i0 + 1, i1] * a0 * (1 - a1)
            + self.f[i0, i1 + 1] * (1 - a0) * a1
            + self.f[i0 + 1, i1 + 1] * a0 * a1
        )

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.tabulated:
            return self.model.log_joint(z, x)
        k, d, s = self.k, self.d, self.sigma
        resid = (x - self.mean(z)) / s.to(x.dtype)
        return (
            -0.5 * (z * z).sum(-1)
            - 0.5 * k * math.log(2 * math.pi)
            - 0.5 * (resid * resid).sum(-1)
            - self.log_norm
            - 0.5 * d * math.log(2 * math.pi)
        )


def _inits(ref, modes, count: int):
    """Starting ``(loc, log_scale)`` ``(N, count, K)``: the moment-matched Gaussian and the
    heaviest modes of each point's reference posterior (a mode's draws give its mean and
    spread)."""
    mean = torch.as_tensor(ref.moments["mean"].values, dtype=torch.float64)
    cov = np.diagonal(ref.moments["cov"].values, axis1=-2, axis2=-1).copy()
    var = torch.as_tensor(cov, dtype=torch.float64)
    sd = var.clamp_min(1e-12).sqrt()
    locs, scales = [], []
    all_centres, all_labels = modes
    for n in range(mean.shape[0]):
        loc_n, sd_n = [mean[n]], [sd[n]]
        centres, labels = all_centres[n].double(), all_labels[n]
        for j in range(int(labels.max()) + 1):
            pts = centres[labels == j]
            loc_n.append(pts.mean(0))
            spread = pts.std(0) if pts.shape[0] > 2 else sd[n] * 0.1
            sd_n.append(torch.maximum(spread, sd[n] * 1e-3))
            if len(loc_n) == count:
                break
        while len(loc_n) < count:
            loc_n.append(loc_n[-1])
            sd_n.append(sd_n[-1])
        locs.append(torch.stack(loc_n))
        scales.append(torch.stack(sd_n))
    return torch.stack(locs), torch.stack(scales).log()


def best_mean_field(
    model,
    x: torch.Tensor,
    reference=None,
    *,
    method: str = "auto",
    modes=None,
    num_draws: int = 1000,
    steps: int = BEST_STEPS,
    inits: int = BEST_INITS,
    seed: int = 0,
    budget=None,
) -> dict:
    r"""The best mean-field Gaussian for every point's posterior and its reverse KL, KL*(x).

    .. math::

        \mathrm{KL}^*(x) = \min_{\mu, s}\ \log p(x) - \sum_i \log s_i - \tfrac K2 (1 + \log 2\pi)
            - \mathbb E_{\mathcal N(\mu, \operatorname{diag} s^2)}[\log p(x, z)],

    :math:`\log p(x)` from the reference, the expectation by Gauss–Hermite quadrature
    (:data:`GH_NODES` per dimension; exact for polynomial log densities), minimised by Adam
    from :data:`BEST_INITS` starting points (the moment-matched Gaussian and the heaviest
    reference modes, :mod:`pyrofail.analysis.reference.modes`); the best per point is kept. The result
    is an upper bound on the true minimum, equal to it when a start lies in its basin. For a
    Gaussian posterior with precision :math:`\Lambda` it is
    :math:`\tfrac12(\sum_i \log\Lambda_{ii} - \log\det\Lambda)`.

    Points are optimised in chunks within ``budget``, the worker's memory budget
    (:mod:`pyrofail.memory`): each point's starts are optimised on their own, so the chunks
    give the same numbers as one batch (to float rounding).

    :returns: ``{"kl", "loc", "scale"}`` per point, ``"mean"`` (the mean KL*),
        ``"share_hard"`` (share of points with KL* > :data:`HARD_KL`) and ``"hard_kl"``.
    """
    x = torch.as_tensor(x).double()
    if reference is None:
        reference = reference_posterior(model, x, method, num_draws=num_draws, seed=seed)
    if modes is None:
        modes = reference_modes(reference, seed=seed)
    work = copy.deepcopy(model).double()
    log_joint = _LogJoint(work)
    k = model.latent_dim
    # the reference (ArviZ) and the quadrature rule are on the CPU: all of it on the model's device
    dev = _device(work)
    x = x.to(dev)
    t, w = (a.to(dev) for a in _gauss_hermite(k, GH_NODES.get(k, max(3, int(4096 ** (1 / k))))))
    log_px = reference_data.log_px(reference)[0].double().to(dev)
    loc0, log_s0 = (a.to(dev) for a in _inits(reference, modes, inits))  # (N, I, K)
    n = x.shape[0]
    kl_star = torch.empty(n, dtype=torch.float64, device=dev)
    loc, scale = (torch.empty(n, k, dtype=torch.float64, device=dev) for _ in range(2))
    # every point's starts are optimised on their own (the loss is a sum over points and Adam
    # works element by element), so chunks of points give the numbers of one big batch; a
    # point holds inits x nodes rows of the log joint with their gradients
    row = 8 * (8 * work.data_dim + 10 * k) if log_joint.tabulated else memory.model_row_bytes(work)
    per_point = inits * t.shape[0] * memory.TRAINING_FACTOR * row
    for lo, hi in memory.steps(n, memory.rows(budget, per_point)):
        part = slice(lo, hi)
        kl_star[part], loc[part], scale[part] = _optimise(
            log_joint, x[part], log_px[part], loc0[part], log_s0[part], t, w, steps
        )
    return {
        "kl": kl_star,
        "loc": loc,
        "scale": scale,
        "mean": float(kl_star.mean()),
        "share_hard": float((kl_star > HARD_KL).double().mean()),
        "hard_kl": HARD_KL,
    }


def _optimise(log_joint, x, log_px, loc0, log_s0, t, w, steps: int):
    """KL* ``(n,)`` and the best ``(loc, scale)`` ``(n, K)`` of the points ``x`` from their
    starts ``(n, I, K)`` (Adam, cosine schedule; quadrature nodes ``t`` and weights ``w``)."""
    k = loc0.shape[-1]
    s0 = log_s0.exp()
    u = torch.zeros_like(loc0, requires_grad=True)
    v = torch.zeros_like(loc0, requires_grad=True)
    xs = x[:, None, None, :]
    const = 0.5 * k * (1 + math.log(2 * math.pi))

    def kl():
        loc, log_s = loc0 + s0 * u, log_s0 + v
        z = loc[:, :, None, :] + log_s.exp()[:, :, None, :] * t  # (n, I, G, K)
        expect = (log_joint(z, xs) * w).sum(-1)
        return log_px[:, None] - log_s.sum(-1) - const - expect

    opt = torch.optim.Adam([u, v], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            value = kl()
            value.sum().backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        value = kl()
        value = torch.where(torch.isfinite(value), value, torch.inf)
        best = value.argmin(-1)
        pick = best[:, None, None].expand(-1, 1, k)
        loc = torch.gather(loc0 + s0 * u, 1, pick)[:, 0]
        scale = torch.gather((log_s0 + v).exp(), 1, pick)[:, 0]
        # not clamped at 0: a negative KL* can only come from quadrature error, and shows it
        return value.gather(1, best[:, None])[:, 0], loc, scale
