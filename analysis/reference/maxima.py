r"""The local maxima of :math:`\log p(x, z)` for every point, with their Laplace masses.

**Search.** For every data point, ``candidates`` over-dispersed starts, quasi-random draws of
:math:`\mathcal N(0, 4 I)` (a scrambled Sobol sequence: Owen 1998), and any extra starting
candidates (a trained guide's draws, say) climb :math:`\log p(x, z)`: Adam first (a global,
step-size-free start), then damped saddle-free Newton steps (Dauphin et al. 2014: the step
:math:`|H|^{-1} \nabla \log p(x, z)`, with :math:`|H|` the Hessian of :math:`-\log p` with its
eigenvalues replaced by their absolute values) in a trust region that never crosses a valley,
which reach a narrow maximum to within a small fraction of its width.

**Distinct maxima.** End points are taken best first; one is the same maximum as one already kept
when :math:`\log p` along the segment between them never falls below ``dip`` times the lower of
the two (the persistence rule of :mod:`pyrofail.analysis.reference.modes`: no valley, no second mode).

**Laplace mass.** At a maximum :math:`z^*` with Hessian :math:`H` of :math:`-\log p(x, z)`,

.. math::

    \log P^{\text{Laplace}} = \log p(x, z^*) + \tfrac12 \log\det\big(2\pi H^{-1}\big),

the mass of the Gaussian that matches the posterior's height and curvature there (Tierney &
Kadane 1986). It orders the maxima for starting chains (:func:`starting_points`): by mass, not
peak height, so that a broad heavy mode below a narrow peak still gets a chain.

Example:
    >>> import torch
    >>> from pyrofail.models import LinearGaussian
    >>> from pyrofail.analysis.reference.maxima import find_maxima
    >>> truth = LinearGaussian(latent_dim=2, data_dim=3, noise_scale=0.5, seed=0).double()
    >>> x = truth.sample(3, seed=0).x.double()
    >>> found = find_maxima(truth, x, candidates=4, steps=20)
    >>> found.valid.sum(-1).tolist()  # one maximum per point: the posterior is Gaussian
    [1, 1, 1]
    >>> bool(torch.allclose(found.z[:, 0], truth.posterior(x).mean, atol=1e-6))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import pyro.distributions as dist
import torch

from pyrofail.errors import UsageError, check_positive_int

__all__ = [
    "Maxima",
    "add_starts",
    "along_segments",
    "curvature",
    "find_maxima",
    "log_joint_chunked",
    "refine_maxima",
]

EIG_FLOOR = 1e-2  # smallest |eigenvalue| of H used: a posterior sd of at most 10 prior sds
SEGMENT_POINTS = 16  # points on the segment between two maxima where the persistence rule looks
NEWTON_STEPS = 40
CHUNK_POINTS = 2**13  # points per forward pass of the decoder (log_joint_chunked)


class PerPoint:
    """A dataclass whose every field has the points on its leading axis: ``record[rows]`` is the
    same record for the points ``rows`` (a slice or index tensor)."""

    def __getitem__(self, rows):
        return type(self)(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass
class Maxima(PerPoint):
    r"""Distinct local maxima per point, padded to ``J`` per point (``valid`` marks the real ones,
    best first): ``z`` ``(N, J, K)``, ``log_joint`` :math:`\log p(x, z^*)` ``(N, J)``,
    ``log_mass`` the Laplace mass ``(N, J)``, ``tril`` ``(N, J, K, K)`` with
    :math:`L L^\top = H^{-1}` (the Laplace covariance)."""

    z: torch.Tensor
    log_joint: torch.Tensor
    log_mass: torch.Tensor
    tril: torch.Tensor
    valid: torch.Tensor

    def shares(self) -> torch.Tensor:
        """Each maximum's share of the points' total Laplace mass ``(N, J)``, 0 where invalid."""
        lm = self.log_mass.masked_fill(~self.valid, -math.inf)
        return torch.softmax(lm, -1).nan_to_num(0.0)


def curvature(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""The Hessian blocks :math:`\nabla^2_{z_{c,n}} U` ``(C, N, K, K)`` of
    :math:`U = -\log p(x, z)` at ``z`` ``(C, N, K)``, by ``K`` Hessian-vector products: the
    sub-problems are independent, so the product with a vector that is 1 at latent ``j`` of
    every sub-problem is column ``j`` of every block.

    Example:
        >>> import torch
        >>> from pyrofail.models import LinearGaussian
        >>> m = LinearGaussian(latent_dim=2, data_dim=2, noise_scale=1.0, seed=0).double()
        >>> z = torch.zeros(1, 1, 2, dtype=torch.float64)
        >>> curvature(m, torch.zeros(1, 2, dtype=torch.float64), z).shape
        torch.Size([1, 1, 2, 2])
    """
    k = z.shape[-1]
    with torch.enable_grad():
        z = z.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(-model.log_joint(z, x).sum(), z, create_graph=True)
        cols = []
        for j in range(k):
            v = torch.zeros_like(z)
            v[..., j] = 1.0
            (hv,) = torch.autograd.grad(grad, z, v, retain_graph=j < k - 1)
            cols.append(hv)
    h = torch.stack(cols, -1).detach()
    return torch.nan_to_num(0.5 * (h + h.transpose(-1, -2)), nan=0.0)


@torch.no_grad()
def log_joint_chunked(model, z: torch.Tensor, x: torch.Tensor, points: int = CHUNK_POINTS) -> torch.Tensor:
    """``model.log_joint(z, x)`` without gradients, a few thousand points at a time along ``z``'s
    first dimension (``x`` broadcasts against the rest, as in ``log_joint``; with ``x`` of shape
    ``(N, D)``, ``z`` ``(..., N, K)`` is flattened to ``(L, N, K)`` first). A 3 x 50 MLP decoder
    evaluates a point about four times faster in chunks of thousands than in one batch of a
    million (its activations stay in the cache): 0.9 s against 3.6 s for 4,000 x 300 points on
    one thread."""
    flatten = z.dim() > 3 and x.dim() <= 2
    flat = z.reshape(-1, *z.shape[-2:]) if flatten else z
    per = max(1, points // max(1, math.prod(flat.shape[1:-1])))
    out = torch.cat([model.log_joint(flat[i : i + per], x) for i in range(0, flat.shape[0], per)])
    return out.reshape(z.shape[:-1]) if flatten else out


def _log_joint(model, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    lp = log_joint_chunked(model, z, x)
    return torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf))


def _adam(model, x, z, steps: int, lr: float) -> torch.Tensor:
    if steps == 0:
        return z
    with torch.enable_grad():
        z = z.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            (-model.log_joint(z, x).nan_to_num(nan=-1e300).sum()).backward()
            opt.step()
            sched.step()
    return z.detach()


def _newton(model, x, z, steps: int, radius: float) -> torch.Tensor:
    r"""Saddle-free Newton ascent on every sub-problem of ``z`` ``(L, N, K)`` at once, in a trust
    region: a step is at most ``r`` long (``r`` doubles after a step taken, shrinks fourfold
    after one refused) and is taken only when :math:`\log p` improves at its end and stays
    above its start at ``SEGMENT_POINTS`` points along it, so that no step tunnels through a
    valley into another mode."""
    lp = _log_joint(model, z, x)
    r = torch.full(lp.shape, radius, dtype=z.dtype, device=z.device)
    t = torch.arange(1, SEGMENT_POINTS + 1, dtype=z.dtype, device=z.device) / SEGMENT_POINTS  # to the end
    for _ in range(steps):
        with torch.enable_grad():
            zg = z.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model.log_joint(zg, x).sum(), zg)
        grad = grad.nan_to_num(0.0)
        evals, evecs = torch.linalg.eigh(curvature(model, x, z))
        inv = 1.0 / evals.abs().clamp_min(EIG_FLOOR)
        step = (evecs @ (inv[..., None] * (evecs.transpose(-1, -2) @ grad[..., None])))[..., 0]
        norm = step.norm(dim=-1)
        step = step * (r / norm.clamp_min(1e-300)).clamp_max(1.0)[..., None]
        path = _log_joint(model, z + t[:, None, None, None] * step, x)  # (T, L, N)
        take = (path[-1] > lp) & (path.amin(0) >= lp)
        z = torch.where(take[..., None], z + step, z)
        lp = torch.where(take, path[-1], lp)
        r = torch.where(take, 2.0 * r, 0.25 * r)
    return z


def _distinct(model, x, z, lp, dip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best first, the end points ``z`` ``(L, N, K)`` that are not the same maximum as a better
    one by the persistence rule: ``(z (N, J, K), log_joint (N, J), valid (N, J))``."""
    n_cand, n, k = z.shape
    order = lp.argsort(0, descending=True)
    z = z.gather(0, order[..., None].expand(-1, -1, k))
    lp = lp.gather(0, order)
    dev = z.device
    kept_z = torch.zeros(n, n_cand, k, dtype=z.dtype, device=dev)
    kept_lp = torch.full((n, n_cand), -math.inf, dtype=z.dtype, device=dev)
    count = torch.zeros(n, dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)
    t = torch.arange(1, SEGMENT_POINTS + 1, dtype=z.dtype, device=dev) / (SEGMENT_POINTS + 1)
    for j in range(n_cand):
        c, lc = z[j], lp[j]  # (N, K), (N,)
        ok = torch.isfinite(lc)
        width = max(1, int(count.max()))
        other = kept_z[:, :width]  # (N, W, K)
        seg = other[None] + t[:, None, None, None] * (c[None, :, None] - other[None])  # (T, N, W, K)
        low = _log_joint(model, seg.transpose(1, 2), x).transpose(1, 2).amin(0)  # (T, W, N) -> (N, W)
        floor = torch.minimum(kept_lp[:, :width], lc[:, None]) + math.log(dip)
        same = (torch.arange(width, device=dev) < count[:, None]) & (low >= floor)
        new = ok & ~same.any(-1)
        slot = count.clamp_max(n_cand - 1)
        kept_z[rows[new], slot[new]] = c[new]
        kept_lp[rows[new], slot[new]] = lc[new]
        count = count + new.long()
    width = max(1, int(count.max()))
    valid = torch.arange(width, device=dev) < count[:, None]
    return kept_z[:, :width], kept_lp[:, :width], valid


@torch.no_grad()
def find_maxima(
    model,
    x: torch.Tensor,
    *,
    candidates: int = 32,
    extra: torch.Tensor | None = None,
    steps: int = 200,
    lr: float = 0.05,
    newton_steps: int = NEWTON_STEPS,
    dip: float = 0.5,
    seed: int = 0,
) -> Maxima:
    """The distinct local maxima of :math:`\\log p(x, z)` at every row of ``x`` and their Laplace
    masses (module docstring).

    :param candidates: over-dispersed starts per point, quasi-random :math:`\\mathcal N(0, 4 I)`.
    :param extra: further starts ``(L, N, K)`` (a trained guide's draws, say).
    :param steps: Adam steps (learning rate ``lr``, cosine-annealed) before ``newton_steps``
        damped Newton steps.
    :param dip: two end points are one maximum unless :math:`p(x, z)` between them falls below
        ``dip`` times the lower one.
    """
    candidates = check_positive_int("candidates", candidates, minimum=0)
    n, k = x.shape[0], model.latent_dim
    # a scrambled Sobol sequence pushed through 2 * Phi^-1: over-dispersed, and stratified, so
    # that no region of the prior is left without a start by chance
    sobol = torch.quasirandom.SobolEngine(k, scramble=True, seed=int(seed))
    sobol = (
        sobol.draw(candidates, dtype=torch.float64) if candidates else torch.zeros(0, k, dtype=torch.float64)
    )
    base = 2.0 * torch.special.ndtri(sobol.clamp(1e-9, 1 - 1e-9)).to(device=x.device, dtype=x.dtype)
    starts = [base[:, None, :].expand(candidates, n, k)]
    if extra is not None:
        extra = torch.as_tensor(extra)
        if extra.dim() != 3 or tuple(extra.shape[1:]) != (n, k):
            raise UsageError(f"extra candidates have shape {tuple(extra.shape)}; expected (L, {n}, {k})")
        starts.append(extra.detach().to(device=x.device, dtype=x.dtype))
    z = torch.cat(starts)
    if z.shape[0] == 0:
        raise UsageError("find_maxima needs at least one candidate: candidates=0 and no extra")
    z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    z = _newton(model, x, _adam(model, x, z, steps, lr), newton_steps, lr)
    z_max, lp, valid = _distinct(model, x, z, _log_joint(model, z, x), dip)
    evals, evecs = torch.linalg.eigh(curvature(model, x, z_max.transpose(0, 1)).transpose(0, 1))
    evals = evals.abs().clamp_min(EIG_FLOOR)
    log_mass = lp + 0.5 * k * math.log(2 * math.pi) - 0.5 * evals.log().sum(-1)
    cov = (evecs * evals.reciprocal()[..., None, :]) @ evecs.transpose(-1, -2)  # H^-1
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    cov = torch.where(valid[..., None, None], 0.5 * (cov + cov.transpose(-1, -2)), eye)
    tril = torch.linalg.cholesky(cov)
    log_mass = log_mass.masked_fill(~valid, -math.inf)
    return Maxima(z_max, lp.masked_fill(~valid, -math.inf), log_mass, tril, valid)


def _outside_draws(model, x, maxima: Maxima, num: int, top: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance draws from half the prior, half Student-t's on the maxima' Laplace
    approximations: the ``top`` heaviest draws ``(top, N, K)`` where the prior explains the
    proposal density better than every maximum, and the share of the weight on such draws ``(N,)``."""
    n, j, k = maxima.z.shape
    dtype = maxima.z.dtype
    share = maxima.shares()
    mix = torch.where(maxima.valid, 0.8 * share + 0.2 / maxima.valid.sum(-1, keepdim=True), 0.0)
    log_mix = torch.cat([(0.5 * mix).log(), torch.full((n, 1), math.log(0.5), dtype=dtype)], -1)
    comp = torch.multinomial(log_mix.exp().float(), num, replacement=True, generator=gen).T  # (S, N)
    eps = torch.randn(num, n, k, generator=gen, dtype=dtype)
    chi2 = torch.randn(num, n, 4, generator=gen, dtype=dtype).pow(2).sum(-1)
    rows = torch.arange(n).expand(num, n)
    pick = comp.clamp_max(j - 1)
    t_draw = (
        maxima.z[rows, pick]
        + (4.0 / chi2).sqrt()[..., None] * (maxima.tril[rows, pick] @ eps[..., None])[..., 0]
    )
    z = torch.where((comp == j)[..., None], eps, t_draw).to(x.device)
    df = torch.tensor(4.0, dtype=dtype)
    lt = dist.MultivariateStudentT(df, maxima.z, scale_tril=maxima.tril).log_prob(z[:, :, None, :])
    lp0 = -0.5 * (z * z).sum(-1, keepdim=True) - 0.5 * k * math.log(2 * math.pi)
    parts = torch.cat([lt, lp0], -1) + log_mix  # (S, N, J + 1)
    lw = _log_joint(model, z, x) - torch.logsumexp(parts, -1)
    lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -math.inf))
    outside = parts.argmax(-1) == j
    w = torch.softmax(lw, 0).nan_to_num(0.0)
    share_out = (w * outside).sum(0)
    best = lw.masked_fill(~outside, -math.inf).topk(min(top, num), dim=0).indices  # (top, N)
    return z.gather(0, best[..., None].expand(-1, -1, k)), share_out


@torch.no_grad()
def refine_maxima(
    model,
    x: torch.Tensor,
    maxima: Maxima,
    *,
    rounds: int = 2,
    num: int = 2000,
    top: int = 8,
    threshold: float = 0.01,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
) -> Maxima:
    r"""Look for maxima that the optimisation's starts missed: importance sampling from the
    prior and the known maxima' Laplace approximations puts weight outside every known maximum
    when posterior mass lies there; the ``top`` heaviest such draws of every point are new starts.
    Repeated ``rounds`` times while any point has more than ``threshold`` of its weight outside.
    The known maxima are kept (they are starts too), and :func:`find_maxima`'s persistence rule
    keeps the new ones that are distinct.

    Example:
        >>> import torch
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian(latent_dim=1, data_dim=2, noise_scale=0.5, seed=0).double()
        >>> x = truth.sample(2, seed=0).x.double()
        >>> m = find_maxima(truth, x, candidates=2, steps=20)
        >>> refine_maxima(truth, x, m).valid.sum(-1).tolist()
        [1, 1]
    """
    gen = torch.Generator().manual_seed(int(seed) + 23)
    for _ in range(rounds):
        starts, share_out = _outside_draws(model, x, maxima, num, top, gen)
        need = share_out > threshold
        if not bool(need.any()):
            break
        maxima = add_starts(model, x, maxima, starts, need.nonzero().flatten(), steps=steps, lr=lr, seed=seed)
    return maxima


def add_starts(model, x, maxima: Maxima, starts: torch.Tensor, rows: torch.Tensor, **options) -> Maxima:
    """``maxima`` with the maxima that further ``starts`` ``(L, N, K)`` climb to added at the
    points ``rows`` (the known maxima climb again with them, and the persistence rule keeps the
    distinct ones); ``options`` go to :func:`find_maxima`."""
    if rows.numel() == 0:
        return maxima
    known = maxima.z[rows].transpose(0, 1)  # (J, R, K): invalid slots repeat the best maximum
    known = torch.where(maxima.valid[rows].T[..., None], known, known[:1])
    extra = torch.cat([known, starts[:, rows].to(known.dtype)])
    extra = torch.where(torch.isfinite(extra), extra, known[:1])
    found = find_maxima(model, x[rows], candidates=0, extra=extra, **options)
    return _replace_rows(maxima, rows, found)


@torch.no_grad()
def along_segments(model, x: torch.Tensor, segments, *, resolution: int = 1024, per_point: int = 16):
    r"""Starts ``(L, N, K)`` from segments ``(point, start, end)`` (the divergent leapfrog steps of
    :func:`pyrofail.analysis.reference.nuts.sample_nuts`): on each, the best of ``resolution`` evenly
    spaced points by :math:`\log p(x, z)`, at most ``per_point`` per point (NaN where a point
    has fewer), and the points that have any ``(R,)``. A maximum narrower than any step the
    sampler could take (a needle on a cliff) lies on the step that jumped across it, where no
    gradient from an optimisation start far away would lead."""
    n, k = x.shape[0], int(segments[0][1].shape[-1]) if segments else 0
    if not segments:
        return torch.zeros(0, n, k, dtype=x.dtype), torch.zeros(0, dtype=torch.long)
    point = torch.cat([p for p, _, _ in segments])
    a = torch.cat([b for _, b, _ in segments]).to(x.dtype)
    b = torch.cat([e for _, _, e in segments]).to(x.dtype)
    t = torch.linspace(0.0, 1.0, resolution, dtype=x.dtype)
    best = torch.empty_like(a)
    for i in range(0, a.shape[0], 256):  # bounds the memory at (resolution, 256, K)
        sl = slice(i, i + 256)
        line = a[sl][None] + t[:, None, None] * (b[sl] - a[sl])[None]  # (T, E, K)
        lp = _log_joint(model, line, x[point[sl]]).nan_to_num(nan=-math.inf)  # (T, E)
        best[sl] = line.gather(0, lp.argmax(0)[None, :, None].expand(1, -1, k))[0]
    out = torch.full((per_point, n, k), math.nan, dtype=x.dtype)
    seen = torch.zeros(n, dtype=torch.long)
    for e in range(point.shape[0]):  # few: at most MAX_DIVERGENT_STEPS steps' culprits
        p = int(point[e])
        if seen[p] < per_point:
            out[seen[p], p] = best[e]
            seen[p] += 1
    return out, (seen > 0).nonzero().flatten()


def _replace_rows(maxima: Maxima, rows: torch.Tensor, found: Maxima) -> Maxima:
    """``maxima`` with the points ``rows`` replaced by ``found`` (padded to a common ``J``)."""
    j = max(maxima.z.shape[1], found.z.shape[1])

    def pad(m: Maxima) -> Maxima:
        extra = j - m.z.shape[1]
        if extra == 0:
            return m
        n, _, k = m.z.shape
        eye = torch.eye(k, dtype=m.z.dtype, device=m.z.device).expand(n, extra, k, k)
        return Maxima(
            torch.cat([m.z, m.z.new_zeros(n, extra, k)], 1),
            torch.cat([m.log_joint, m.log_joint.new_full((n, extra), -math.inf)], 1),
            torch.cat([m.log_mass, m.log_mass.new_full((n, extra), -math.inf)], 1),
            torch.cat([m.tril, eye], 1),
            torch.cat([m.valid, m.valid.new_zeros(n, extra)], 1),
        )

    out, new = pad(maxima), pad(found)
    for name in ("z", "log_joint", "log_mass", "tril", "valid"):
        getattr(out, name)[rows] = getattr(new, name)
    return out
