r"""The reference posterior by NUTS, for any latent dimension, with mode masses made right.

**Sampling.** Pyro's NUTS (Hoffman & Gelman 2014, with multinomial trajectory sampling and
the generalised U-turn criterion of Betancourt 2017) runs on the potential

.. math::

    U(\mathbf z) = -\sum_{c=1}^{C} \sum_{n=1}^{N} \log p(x_n, z_{c,n}),

one flat vector :math:`\mathbf z` of ``C`` chains :math:`\times` ``N`` points :math:`\times`
``K`` latents: ``C`` dispersed chains for every data point run together as one vectorised
chain over a replicated data plate, with no Python loop over points and no process per chain.
The sub-problems :math:`z_{c,n}` are independent, so this is ``C N`` chains sharing one step
size and one trajectory length; the warm-up adapts a diagonal mass matrix, i.e. one scale per
coordinate, so points with narrow and wide posteriors are each sampled at their own scale. It
starts from the curvature at the starting points (:func:`curvature_scales`) rather than
from the identity. Chains start from ``init="modes"``: for every point, ``init_candidates``
over-dispersed draws :math:`\mathcal N(0, 4 I)` climb :math:`\log p(x, z)` by Adam, and the
``C`` chains start at mutually farthest end points among those within 10 nats of the best, so
that separated modes each get a chain.

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
``pareto_k``; ``missing_mass``; ``num_modes``; ``mode_mass`` :math:`P_m`. :func:`rhat` and
:func:`ess` compute ArviZ's definitions, vectorised.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS

from pyrofail.errors import UsageError, check_choice, check_positive_int

INITS = ("modes", "prior")
PRECONDITIONS = ("block", "diagonal")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
STUDENT_DF = 4.0
STUDENT_WEIGHT = 0.2  # of the Student-t components in the importance proposal
FLOOR = 0.2  # share of the mode weights spread equally over the modes
KERNELS = 64  # kernels per mode and latent dimension in the importance proposal
INIT_WINDOW = 10.0  # nats below the best end point that still count as a mode to start from


# -- initialisation ------------------------------------------------------------------------
def _farthest(cand: torch.Tensor, logp: torch.Tensor, c: int) -> torch.Tensor:
    """``c`` mutually farthest rows of ``cand`` ``(L, N, K)`` per point, among those within
    ``INIT_WINDOW`` nats of the best (farthest-point sampling, starting at the best)."""
    n = cand.shape[1]
    rows = torch.arange(n)
    good = logp >= logp.amax(0) - INIT_WINDOW  # (L, N)
    chosen = [logp.argmax(0)]  # (N,)
    mind = (cand - cand[chosen[0], rows]).norm(dim=-1)  # (L, N)
    for _ in range(c - 1):
        score = torch.where(good, mind, torch.full_like(mind, -1.0))
        nxt = score.argmax(0)
        chosen.append(nxt)
        mind = torch.minimum(mind, (cand - cand[nxt, rows]).norm(dim=-1))
    return torch.stack([cand[i, rows] for i in chosen])  # (C, N, K)


def initial_points(
    model, x: torch.Tensor, num_chains: int, *, candidates: int = 32, steps: int = 200, lr: float = 0.05
) -> torch.Tensor:
    """Dispersed starting points ``(C, N, K)``: local maxima of :math:`\\log p(x, z)` reached
    by Adam from ``candidates`` over-dispersed draws :math:`\\mathcal N(0, 4 I)` per point, the
    ``C`` mutually farthest of those within 10 nats of the best kept (:func:`_farthest`)."""
    k = model.latent_dim
    z = (2.0 * torch.randn(candidates, x.shape[0], k, dtype=x.dtype)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        (-model.log_joint(z, x).sum()).backward()
        opt.step()
        sched.step()
    z = z.detach()
    with torch.no_grad():
        logp = model.log_joint(z, x)
    logp = torch.where(torch.isfinite(logp), logp, torch.full_like(logp, -math.inf))
    return _farthest(z, logp, num_chains)


# -- the sampler ---------------------------------------------------------------------------
class _PointwiseNUTS(NUTS):
    """Pyro's NUTS on the flat potential, charging each divergent trajectory to the
    sub-problems (chain, point) whose own energy error explains it, and counting gradients."""

    def __init__(self, potential_fn, per_point_potential, group: int, inverse_mass=None, **kwargs):
        self.num_grads = 0
        self._initial_inverse_mass = inverse_mass

        def counted(params):
            self.num_grads += 1
            return potential_fn(params)

        super().__init__(potential_fn=counted, **kwargs)
        self._per_point = per_point_potential
        self._group = group  # latents per sub-problem
        self._start = None
        self.point_divergences: list[tuple[int, torch.Tensor]] = []

    def _initialize_adapter(self):
        super()._initialize_adapter()
        if self._initial_inverse_mass is not None:
            # start the warm-up from per-coordinate scales instead of the identity, then find
            # the step size again for them
            (sites,) = self.mass_matrix_adapter.inverse_mass_matrix.keys()
            self.mass_matrix_adapter.inverse_mass_matrix = {sites: self._initial_inverse_mass}
            if self._adapter.adapt_step_size:
                self._adapter.reset_step_size_adaptation(self._initial_params)

    def _sample_r(self, name):
        r, r_unscaled = super()._sample_r(name)
        z, _, _ = self._fetch_from_cache()
        self._start = (z, r_unscaled)
        return r, r_unscaled

    def _energies(self, z, r_unscaled) -> torch.Tensor:
        (rv,) = r_unscaled.values()
        kinetic = 0.5 * rv.reshape(-1, self._group).pow(2).sum(-1)
        with torch.no_grad():
            return self._per_point(z) + kinetic

    def _build_basetree(self, z, r, z_grads, log_slice, direction, energy_current):
        tree = super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
        if tree.diverging and self._t >= self._warmup_steps and self._start is not None:
            d_energy = self._energies(tree.z_right, tree.r_right_unscaled) - self._energies(*self._start)
            d_energy = torch.nan_to_num(d_energy, nan=math.inf)
            culprit = d_energy >= 0.1 * float(d_energy.clamp_min(0).sum().clamp_max(1e300))
            culprit[d_energy.argmax()] = True
            self.point_divergences.append((self._t - self._warmup_steps, culprit.nonzero().flatten()))
        return tree


def curvature(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""The Hessian blocks :math:`\nabla^2_{z_{c,n}} U` ``(C, N, K, K)`` of
    :math:`U = -\log p(x, z)` at ``z`` ``(C, N, K)``, by ``K`` Hessian-vector products: the
    sub-problems are independent, so the product with a vector that is 1 at latent ``j`` of
    every sub-problem is column ``j`` of every block."""
    c, n, k = z.shape
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


def curvature_scales(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""Per-coordinate variances :math:`1 / \max(1, \partial^2_{z_k} U)` at ``z`` ``(C, N, K)``,
    from the diagonal of :func:`curvature`: at most the prior's variance, 1."""
    h = curvature(model, x, z).diagonal(dim1=-2, dim2=-1)
    return 1.0 / h.clamp_min(1.0)


def block_preconditioner(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""Per sub-problem ``(C, N, K, K)`` matrices :math:`L` with :math:`L L^\top` the inverse
    of the Hessian block at ``z`` (its eigenvalues clamped at the prior precision, 1): the
    Laplace approximation's scale, so that :math:`z = z_0 + L u` makes every sub-problem about
    isotropic in :math:`u` near its start."""
    evals, evecs = torch.linalg.eigh(curvature(model, x, z))
    return evecs * evals.clamp_min(1.0).rsqrt()[..., None, :]


def _potentials(model, x, c: int, jit_compile: bool, shift=None, tril=None):
    """The flat potential and its per-sub-problem terms, in ``u`` with ``z = shift + tril u``
    (``z = u`` without them)."""
    n, k = x.shape[0], model.latent_dim

    def to_z(u):
        u = u.reshape(c, n, k)
        return u if tril is None else shift + (tril @ u[..., None])[..., 0]

    def per_point(params):
        return -model.log_joint(to_z(params["z"]), x).reshape(-1)

    def total(u):
        return -model.log_joint(to_z(u), x).sum()

    if not jit_compile:
        return (lambda params: total(params["z"])), per_point
    compiled = {}

    def traced(params):
        z = params["z"]
        if "fn" not in compiled:
            with warnings.catch_warnings():
                # Pyro's own jit_compile uses torch.jit.trace, deprecated since torch 2.10
                warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                compiled["fn"] = torch.jit.trace(total, (z.detach(),), check_trace=False)
        return compiled["fn"](z)

    return traced, per_point


def sample_nuts(
    model,
    x: torch.Tensor,
    z0: torch.Tensor,
    *,
    num_samples: int,
    num_warmup: int,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    precondition: str = "diagonal",
    progress: bool = False,
):
    """Run Pyro's NUTS from ``z0`` ``(C, N, K)``; returns draws ``(C, S, N, K)``, divergence
    flags ``(C, S, N)`` and sampler statistics. ``precondition="block"`` samples :math:`u` in
    :math:`z = z_0 + L u` (:func:`block_preconditioner`); ``"diagonal"`` samples :math:`z`,
    the warm-up starting from :func:`curvature_scales`."""
    c, n, k = z0.shape
    if precondition == "block":
        tril = block_preconditioner(model, x, z0)
        u0, inverse_mass = torch.zeros_like(z0), torch.ones(z0.numel(), dtype=z0.dtype)
        potential, per_point = _potentials(model, x, c, jit_compile, z0, tril)
    else:
        tril, u0 = None, z0
        inverse_mass = curvature_scales(model, x, z0).reshape(-1)
        potential, per_point = _potentials(model, x, c, jit_compile)
    kernel = _PointwiseNUTS(
        potential,
        per_point,
        k,
        inverse_mass=inverse_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        full_mass=False,
    )
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=num_warmup,
        initial_params={"z": u0.reshape(-1).clone()},
        disable_progbar=not progress,
    )
    start = time.perf_counter()
    mcmc.run()
    seconds = time.perf_counter() - start
    z = mcmc.get_samples()["z"].reshape(num_samples, c, n, k)
    if tril is not None:
        z = z0 + (tril @ z[..., None])[..., 0]
    z = z.transpose(0, 1)
    diverging = torch.zeros(num_samples * c * n, dtype=torch.bool)
    for t, culprits in kernel.point_divergences:
        diverging.view(num_samples, c * n)[t, culprits] = True
    diverging = diverging.view(num_samples, c, n).transpose(0, 1)
    stats = {
        "sampling_seconds": seconds,
        "num_grads": kernel.num_grads,
        "step_size": float(kernel.step_size),
        "divergent_transitions": len(kernel.point_divergences),
    }
    return z.contiguous(), diverging.contiguous(), stats


# -- diagnostics (ArviZ's definitions, vectorised over points and latents) -----------------
def _autocov(v: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance along the last dimension (by FFT, as ``arviz.autocov``)."""
    s = v.shape[-1]
    v = v - v.mean(-1, keepdim=True)
    f = torch.fft.rfft(v, n=2 * s)
    return torch.fft.irfft(f * f.conj(), n=2 * s)[..., :s] / s


def _ess_chains(v: torch.Tensor) -> torch.Tensor:
    """ESS of ``v`` ``(..., chains, draws)`` by Geyer's initial monotone sequence, exactly as
    ArviZ's ``_ess`` (Vehtari et al. 2021, eqs. 10-11)."""
    m, s = v.shape[-2:]
    acov = _autocov(v)
    mean_var = acov[..., 0].mean(-1) * s / (s - 1.0)
    var_plus = mean_var * (s - 1.0) / s
    if m > 1:
        var_plus = var_plus + v.mean(-1).var(-1)
    rho = 1.0 - (mean_var[..., None] - acov.mean(-2)) / var_plus[..., None]  # (..., s)
    rho[..., 0] = 1.0
    npairs = s // 2
    pairs = rho[..., : 2 * npairs].reshape(*rho.shape[:-1], npairs, 2).sum(-1)  # S_j
    # the sequence runs while the previous pair sum is positive and 2j - 1 < s - 3
    j = torch.arange(npairs, device=v.device)
    allowed = (2 * j - 1) < (s - 3)
    positive_before = (
        torch.cat([torch.ones_like(pairs[..., :1], dtype=torch.bool), (pairs[..., :-1] > 0)], -1)
        .cumprod(-1)
        .bool()
    )
    processed = positive_before & (allowed | (j == 0))
    last = processed.long().sum(-1) - 1  # index J of the last processed pair
    mono = torch.cummin(pairs, -1).values
    take = j < last[..., None]
    tau = -1.0 + 2.0 * (mono * take).sum(-1)
    rho_even = rho.gather(-1, (2 * last).clamp_max(s - 1)[..., None])[..., 0]
    pair_last = pairs.gather(-1, last[..., None])[..., 0]
    tau = tau + torch.where((rho_even > 0) | (pair_last >= 0), rho_even, torch.zeros_like(rho_even))
    total = m * s
    tau = tau.clamp_min(1.0 / math.log10(total))
    out = total / tau
    flat = (v.amax((-2, -1)) - v.amin((-2, -1))) < np.finfo(float).resolution
    return torch.where(flat, torch.full_like(out, float(total)), out)


def _split(mask: torch.Tensor) -> torch.Tensor:
    """Split each chain's kept draws ``mask`` ``(..., C, S)`` into first and last halves (the
    middle draw of an odd count dropped, as ArviZ does): masks ``(..., 2C, S)``."""
    pos = mask.long().cumsum(-1) - 1
    count = mask.sum(-1, keepdim=True)
    half = count // 2
    first = mask & (pos < half)
    last = mask & (pos >= count - half)
    return torch.cat([first, last], -2)


def _z_scale(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rank-normalise ``v`` ``(..., C, S)`` over its kept draws ``mask`` (average ranks of ties,
    as ``scipy.stats.rankdata``; Blom's offset 3/8, as ArviZ)."""
    shape = v.shape
    flat = torch.where(mask, v, torch.full_like(v, math.inf)).flatten(-2)
    order = flat.argsort(dim=-1, stable=True)
    sv = flat.gather(-1, order)
    new = torch.ones_like(sv, dtype=torch.bool)
    new[..., 1:] = sv[..., 1:] != sv[..., :-1]
    gid = new.long().cumsum(-1) - 1
    pos = torch.arange(1, sv.shape[-1] + 1, dtype=v.dtype).expand_as(sv)
    gsum = torch.zeros_like(sv).scatter_add_(-1, gid, pos)
    gcnt = torch.zeros_like(sv).scatter_add_(-1, gid, torch.ones_like(sv))
    rank = torch.empty_like(sv).scatter_(-1, order, (gsum / gcnt.clamp_min(1)).gather(-1, gid))
    size = mask.flatten(-2).sum(-1, keepdim=True).to(v.dtype)
    c = 3.0 / 8.0
    p = ((rank - c) / (size - 2 * c + 1)).clamp(1e-12, 1 - 1e-12)
    return torch.special.ndtri(p).reshape(shape)


def _rhat_of(v: torch.Tensor, mask: torch.Tensor, min_draws: int) -> torch.Tensor:
    r""":math:`\sqrt{(B/W + n - 1)/n}` over the chains of ``v`` ``(..., C, S)`` with at least
    ``min_draws`` kept draws; ``n`` their mean length."""
    w = mask.to(v.dtype)
    cnt = w.sum(-1)
    ok = cnt >= max(2, min_draws)
    mean = (v * w).sum(-1) / cnt.clamp_min(1)
    var = ((v - mean[..., None]).pow(2) * w).sum(-1) / (cnt - 1).clamp_min(1)
    m = ok.sum(-1).to(v.dtype)
    okw = ok.to(v.dtype)
    n = (cnt * okw).sum(-1) / m
    grand = (mean * okw).sum(-1) / m
    between = n * ((mean - grand[..., None]).pow(2) * okw).sum(-1) / (m - 1)
    within = (var * okw).sum(-1) / m
    out = torch.sqrt((between / within + n - 1) / n)
    return torch.where(m >= 2, out, torch.full_like(out, math.nan))


def rhat(v: torch.Tensor, mask: torch.Tensor | None = None, min_draws: int = 4) -> torch.Tensor:
    r"""Rank-normalised split :math:`\hat R` of draws ``(..., chains, draws)``: the larger of
    the bulk and tail (folded) values, ArviZ's ``rhat(method="rank")`` (Vehtari, Gelman,
    Simpson, Carpenter & Bürkner 2021).

    :param mask: ``(..., chains, draws)``: which draws count (all by default), e.g. those of
        one mode; each chain's kept draws are split in halves, and halves with fewer than
        ``min_draws`` kept draws are left out.
    """
    v = v.double()
    if mask is None:
        mask = torch.ones(v.shape, dtype=torch.bool, device=v.device)
    sm = _split(mask)
    sv = torch.cat([v, v], -2)
    bulk = _rhat_of(_z_scale(sv, sm), sm, min_draws)
    med = torch.where(sm, sv, torch.full_like(sv, math.nan)).flatten(-2).nanquantile(0.5, dim=-1)
    tail = _rhat_of(_z_scale((sv - med[..., None, None]).abs(), sm), sm, min_draws)
    return torch.maximum(bulk, tail)


def ess(v: torch.Tensor) -> torch.Tensor:
    """Bulk effective sample size of draws ``(..., chains, draws)``: ArviZ's
    ``ess(method="bulk")``, the ESS of the rank-normalised split chains."""
    v = v.double()
    half = v.shape[-1] // 2
    sv = torch.cat([v[..., :half], v[..., v.shape[-1] - half :]], -2)
    return _ess_chains(_z_scale(sv, torch.ones(sv.shape, dtype=torch.bool, device=v.device)))


# -- re-weighting --------------------------------------------------------------------------
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
    import arviz as az

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
    from pyrofail.analysis.modes import assign, find_modes
    from pyrofail.analysis.reference import build_inference_data

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
            rg = rhat(zc[has], mask[has][:, None].expand(-1, k, -1, -1), min_draws // 2).amax(-1)
            within[has] = torch.fmax(within[has], rg)
    r_hat = torch.fmin(rhat(zc).amax(-1), within)
    # ESS of the weighted draws: per mode, each chain contributes its ESS (of the draws less
    # their mode's mean, so that jumps between modes do not count) times its time there
    centre = (
        torch.zeros(n, n_modes, k, dtype=torch.float64).index_put_(
            (torch.arange(n)[:, None].expand_as(lab), lab), pooled.double(), accumulate=True
        )
        / count.clamp_min(1)[..., None]
    )
    centred = (pooled.double() - centre.gather(1, lab[..., None].expand(-1, -1, k))).reshape(n, c, s, k)
    chain_ess = ess(centred.permute(0, 3, 1, 2)[..., None, :]).amin(1)  # (N, C): each chain alone
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


def nuts_reference(
    model,
    x: torch.Tensor,
    *,
    num_draws: int = 2000,
    seed: int = 0,
    num_chains: int = 4,
    num_warmup: int = 500,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    precondition: str = "diagonal",
    init="modes",
    init_candidates: int = 32,
    num_importance: int = 4000,
    defensive: float = 0.1,
    dtype: str = "float64",
    progress: bool = False,
):
    r"""The reference posterior of ``model`` at every row of ``x`` by NUTS (module docstring).

    :param num_draws: draws kept per point after warm-up, over all chains (each chain keeps
        ``ceil(num_draws / num_chains)``).
    :param num_chains: chains per point, ``C`` (at least 2, so that :math:`\hat R` exists).
    :param num_warmup: warm-up iterations (step size and diagonal mass matrix adaptation).
    :param target_accept_prob: the step-size adaptation's target acceptance probability.
    :param max_tree_depth: at most :math:`2^{\text{depth}}` leapfrog steps per iteration.
    :param jit_compile: trace the potential with the PyTorch JIT, as Pyro's own
        ``jit_compile`` does (helps small problems, where Python overhead dominates).
    :param precondition: ``"block"``: sample :math:`u` in :math:`z = z_0 + L u`, with
        :math:`L L^\top` the inverse Hessian of each sub-problem at its start (a dense
        :math:`K \times K` block per chain and point: :func:`block_preconditioner`);
        ``"diagonal"``: sample :math:`z`, with the diagonal mass matrix started from the
        Hessian's diagonal. Either way the warm-up then adapts a diagonal mass matrix.
    :param init: ``"modes"`` (multi-start optimisation, then farthest points), ``"prior"``
        (independent prior draws), or a tensor ``(C, N, K)`` of starting points (a guide's
        draws, say).
    :param init_candidates: optimisation starts per point for ``init="modes"``.
    :param num_importance: importance draws per point for the re-weighting and
        :math:`\log p(x)`.
    :param defensive: weight :math:`\alpha` of the prior in the importance proposal.
    :param dtype: ``"float64"`` or ``"float32"``.
    :param progress: show Pyro's progress bar.
    """
    from pyrofail.analysis.reference import _provenance

    num_draws = check_positive_int("num_draws", num_draws)
    num_chains = check_positive_int("num_chains", num_chains, minimum=2)
    num_warmup = check_positive_int("num_warmup", num_warmup, minimum=0)
    max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)
    init_candidates = check_positive_int("init_candidates", init_candidates)
    num_importance = check_positive_int("num_importance", num_importance, minimum=10)
    if not 0 < target_accept_prob < 1:
        raise UsageError(
            f"target_accept_prob={target_accept_prob!r} is not allowed; expected a number in (0, 1)"
        )
    if not 0 <= defensive < 1:
        raise UsageError(f"defensive={defensive!r} is not allowed; expected a number in [0, 1)")
    check_choice("dtype", dtype, DTYPES)
    check_choice("precondition", precondition, PRECONDITIONS)
    if not isinstance(init, torch.Tensor):
        check_choice("init", init, INITS)
    options = {
        "num_draws": num_draws,
        "num_chains": num_chains,
        "num_warmup": num_warmup,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "jit_compile": bool(jit_compile),
        "precondition": precondition,
        "init": init if isinstance(init, str) else "given",
        "init_candidates": init_candidates,
        "num_importance": num_importance,
        "defensive": defensive,
        "dtype": dtype,
    }
    n, k = x.shape[0], model.latent_dim
    if isinstance(init, torch.Tensor) and tuple(init.shape) != (num_chains, n, k):
        raise UsageError(f"init has shape {tuple(init.shape)}; expected ({num_chains}, {n}, {k})")
    work = copy.deepcopy(model).to(DTYPES[dtype])
    work.requires_grad_(False)
    x = x.detach().to(DTYPES[dtype])
    per_chain = math.ceil(num_draws / num_chains)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if isinstance(init, torch.Tensor):
            z0 = init.detach().to(x.dtype)
        elif init == "prior":
            z0 = torch.randn(num_chains, n, k, dtype=x.dtype)
        else:
            with pyro.validation_enabled(False):
                z0 = initial_points(work, x, num_chains, candidates=init_candidates)
        z, diverging, stats = sample_nuts(
            work,
            x,
            z0,
            num_samples=per_chain,
            num_warmup=num_warmup,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            jit_compile=jit_compile,
            precondition=precondition,
            progress=progress,
        )
    attrs = {**_provenance("nuts", seed, options), "sampler": stats}
    ref = from_draws(
        work,
        x,
        z,
        diverging=diverging,
        num_importance=num_importance,
        defensive=defensive,
        seed=seed,
        attrs=attrs,
    )
    stats["total_seconds"] = time.perf_counter() - start
    ref.posterior.attrs["sampler"] = json.dumps(stats)
    return ref
