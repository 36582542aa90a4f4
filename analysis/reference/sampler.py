r"""Pyro's NUTS on many independent posteriors at once: one flat chain over chains x points.

The potential is

.. math::

    U(\mathbf z) = -\sum_{c=1}^{C} \sum_{n=1}^{N} \log p(x_n, z_{c,n}),

one flat vector :math:`\mathbf z` of ``C`` chains :math:`\times` ``N`` points :math:`\times`
``K`` latents: ``C`` chains for every data point run together as one vectorised chain over a
replicated data plate, with no Python loop over points and no process per chain. The
sub-problems :math:`z_{c,n}` are independent, so this is ``C N`` chains sharing one step size
and one trajectory length (Pyro's NUTS: Hoffman & Gelman 2014, with multinomial trajectory
sampling and the generalised U-turn criterion of Betancourt 2017); the warm-up adapts a
diagonal mass matrix, i.e. one scale per coordinate, so points with narrow and wide posteriors
are each sampled at their own scale. It starts from the curvature at the starting points
(:func:`curvature_scales`) rather than from the identity. :func:`sample_in_batches` runs groups of
points separately, each with its own step size and trajectory length.

Divergent trajectories are charged to the sub-problems whose own energy error explains them,
and the divergent leapfrog steps are kept (``segments``): the segment a step jumped across may
hold a maximum too narrow for any optimisation start to find
(:func:`pyrofail.analysis.reference.maxima.along_segments`).
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from pyro.infer import MCMC, NUTS

from pyrofail.analysis.reference.maxima import curvature

__all__ = ["block_preconditioner", "curvature", "curvature_scales", "sample_in_batches", "sample_nuts"]

MAX_DIVERGENT_STEPS = 256  # default number of divergent leapfrog steps kept


class _PointwiseNUTS(NUTS):
    """Pyro's NUTS on the flat potential, charging each divergent trajectory to the
    sub-problems (chain, point) whose own energy error explains it, and counting gradients."""

    def __init__(self, potential_fn, per_point, group, inverse_mass=None, keep=MAX_DIVERGENT_STEPS, **kw):
        self.num_grads = 0
        self._keep = keep
        self._initial_inverse_mass = inverse_mass

        def counted(params):
            self.num_grads += 1
            return potential_fn(params)

        super().__init__(potential_fn=counted, **kw)
        self._per_point = per_point
        self._group = group  # latents per sub-problem
        self._start = None
        self.point_divergences: list[tuple[int, torch.Tensor]] = []
        # (sub-problems, positions before, positions after) of every divergent leapfrog step,
        # warm-up included: a divergence marks a feature too sharp for the step size, and the
        # segment it jumped across may hold a maximum no optimisation start came near
        self.divergent_steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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
        if tree.diverging and self._start is not None:
            d_energy = self._energies(tree.z_right, tree.r_right_unscaled) - self._energies(*self._start)
            d_energy = torch.nan_to_num(d_energy, nan=math.inf)
            culprit = d_energy >= 0.1 * float(d_energy.clamp_min(0).sum().clamp_max(1e300))
            culprit[d_energy.argmax()] = True
            which = culprit.nonzero().flatten()
            if self._t >= self._warmup_steps:
                self.point_divergences.append((self._t - self._warmup_steps, which))
            if len(self.divergent_steps) < self._keep:
                (before,), (after,) = z.values(), tree.z_right.values()
                before, after = before.reshape(-1, self._group), after.reshape(-1, self._group)
                self.divergent_steps.append((which, before[which].detach(), after[which].detach()))
        return tree


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
    step_size: float | None = None,
    segments: list | None = None,
    max_divergent_steps: int = MAX_DIVERGENT_STEPS,
    progress: bool = False,
):
    """Run Pyro's NUTS from ``z0`` ``(C, N, K)``; returns draws ``(C, S, N, K)``, divergence
    flags ``(C, S, N)`` and sampler statistics. ``precondition="block"`` samples :math:`u` in
    :math:`z = z_0 + L u` (:func:`block_preconditioner`); ``"diagonal"`` samples :math:`z`,
    the warm-up starting from :func:`curvature_scales`. A ``step_size`` fixes the step size and
    the mass matrix (at those scales): nothing is adapted, so ``num_warmup=0`` can start the
    chains sampling where they stand. A list ``segments`` receives, per divergent leapfrog step,
    ``(point, start, end)``: the points' indices ``(E,)`` and the step's ends ``(E, K)`` in
    :math:`z`."""
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
        keep=max_divergent_steps,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        step_size=1.0 if step_size is None else float(step_size),
        adapt_step_size=step_size is None,
        adapt_mass_matrix=step_size is None,
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
    if segments is not None:
        for which, before, after in kernel.divergent_steps:
            if tril is not None:  # back from u to z = z0 + L u, sub-problem by sub-problem
                z0f, lf = z0.reshape(-1, k)[which], tril.reshape(-1, k, k)[which]
                before = z0f + (lf @ before[..., None])[..., 0]
                after = z0f + (lf @ after[..., None])[..., 0]
            segments.append((which % n, before, after))
    stats = {
        "sampling_seconds": seconds,
        "num_grads": kernel.num_grads,
        "step_size": float(kernel.step_size),
        "divergent_transitions": len(kernel.point_divergences),
    }
    return z.contiguous(), diverging.contiguous(), stats


def sample_in_batches(model, x, z0, point_batch, *, step_sizes=None, segments=None, **options):
    """:func:`sample_nuts` on batches of ``point_batch`` points (all at once when ``None``), the
    draws joined along the points; ``step_sizes`` fixes each batch's step size (from an earlier
    run on the same batches). Returns draws, divergences and the statistics summed over batches,
    with ``step_sizes`` per batch (``step_size``: the smallest)."""
    n = x.shape[0]
    size = n if point_batch is None else point_batch
    parts, stats = [], {"sampling_seconds": 0.0, "num_grads": 0, "divergent_transitions": 0, "step_sizes": []}
    for b, lo in enumerate(range(0, n, size)):
        hi = min(n, lo + size)
        found = [] if segments is not None else None
        fixed = None if step_sizes is None else step_sizes[b]
        z, div, st = sample_nuts(model, x[lo:hi], z0[:, lo:hi], step_size=fixed, segments=found, **options)
        parts.append((z, div))
        for key in ("sampling_seconds", "num_grads", "divergent_transitions"):
            stats[key] += st[key]
        stats["step_sizes"].append(st["step_size"])
        if segments is not None:
            segments.extend((point + lo, a, e) for point, a, e in found)
    stats["step_size"] = min(stats["step_sizes"])
    return torch.cat([p[0] for p in parts], 2), torch.cat([p[1] for p in parts], 2), stats
