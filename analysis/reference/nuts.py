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
from the identity.

**Starting points, by mass.** The local maxima of :math:`\log p(x, z)` of every point are found
by multi-start optimisation from ``init_candidates`` quasi-random over-dispersed starts and any
``extra_candidates`` (a trained guide's draws, say), and each gets its Laplace mass
(:mod:`pyrofail.analysis.reference.maxima`). Chains start by mass, not by peak height: one at every maximum
holding at least half a percent of the Laplace mass, the rest shared in proportion to mass
(:func:`~pyrofail.analysis.reference.maxima.starting_points`), so that a broad heavy mode below a narrow
peak gets a chain, and a point with more modes than ``num_chains`` gets more chains: the chain
count ``C`` is the same for every point, the largest number any point needs, at most
``max_chains``. A maximum that still has no chain keeps a component in the importance proposal,
so its mass is estimated and reported (``unrepresented_mass``).

**Maxima the starts missed.** Importance draws from the prior and the maxima's Laplace
approximations that no known maximum explains start the search again
(:func:`~pyrofail.analysis.reference.maxima.refine_maxima`), and so does the best point along every
divergent leapfrog step of the sampler (:func:`~pyrofail.analysis.reference.maxima.along_segments`): a
peak narrower than any step, on a cliff no gradient from afar leads to, lies on a step that
jumped across it.

**Chains at the maxima the draws missed** (``top_up`` rounds). Warm-up's first steps are long,
and a chain started at a maximum often leaves it for a neighbour before sampling starts, so a
maximum of real mass can end with no draw. After the re-weighting, every maximum that no mode of
the draws holds (:func:`pyrofail.analysis.reference.reweight.cover`) and that has at least half a percent
of the Laplace mass gets a further chain, started on it with a fixed step of a quarter of its
Laplace scale (a diagonal mass matrix from its curvature) and no warm-up (nothing adapted: the
chain samples where it stands), and the draws of all chains are re-weighted together.

The draws are then re-weighted so that every mode gets its posterior mass
(:mod:`pyrofail.analysis.reference.reweight`), which also gives :math:`\log p(x)` and the diagnostics.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings

import pyro
import torch
from pyro.infer import MCMC, NUTS

from pyrofail.analysis.reference.idata import provenance
from pyrofail.analysis.reference.maxima import (
    add_starts,
    along_segments,
    curvature,
    find_maxima,
    refine_maxima,
    starting_points,
    top_up_points,
)
from pyrofail.analysis.reference.reweight import from_draws
from pyrofail.errors import UsageError, check_choice, check_positive_int

__all__ = [
    "block_preconditioner",
    "curvature",
    "curvature_scales",
    "initial_points",
    "nuts_reference",
    "sample_nuts",
]

INITS = ("modes", "prior")
PRECONDITIONS = ("block", "diagonal")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
MAX_CHAINS = 16  # default cap on the chains per point that starting by mass may ask for
START_SHARE = 0.005  # a maximum with this share of the Laplace mass gets a chain of its own
TOP_UP_STEP = 0.25  # leapfrog step of the top-up chains, in units of the Laplace scale at their start
MAX_DIVERGENT_STEPS = 256  # divergent leapfrog steps kept for the search of maxima along them


# -- initialisation ------------------------------------------------------------------------
def initial_points(
    model,
    x: torch.Tensor,
    num_chains: int,
    *,
    candidates: int = 32,
    extra: torch.Tensor | None = None,
    max_chains: int = MAX_CHAINS,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """Starting points ``(C, N, K)`` by mass: the local maxima of :math:`\\log p(x, z)` from
    ``candidates`` quasi-random starts and the ``extra`` ones
    (:func:`~pyrofail.analysis.reference.maxima.find_maxima`), one chain at each of non-negligible Laplace
    mass and the rest by mass (:func:`~pyrofail.analysis.reference.maxima.starting_points`);
    ``num_chains <= C <= max_chains``."""
    found = find_maxima(model, x, candidates=candidates, extra=extra, steps=steps, lr=lr, seed=seed)
    return starting_points(found, num_chains, max(num_chains, max_chains), min_share=START_SHARE, seed=seed)


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
            if len(self.divergent_steps) < MAX_DIVERGENT_STEPS:
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


def _sample_in_batches(model, x, z0, point_batch, *, step_sizes=None, segments=None, **options):
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


def nuts_reference(
    model,
    x: torch.Tensor,
    *,
    num_draws: int = 2000,
    seed: int = 0,
    num_chains: int = 4,
    max_chains: int = MAX_CHAINS,
    num_warmup: int = 500,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    precondition: str = "diagonal",
    init="modes",
    init_candidates: int = 32,
    extra_candidates: torch.Tensor | None = None,
    num_importance: int = 4000,
    defensive: float = 0.1,
    dtype: str = "float64",
    top_up: int = 1,
    point_batch: int | None = None,
    progress: bool = False,
):
    r"""The reference posterior of ``model`` at every row of ``x`` by NUTS (module docstring).

    :param num_draws: draws kept per point after warm-up over ``num_chains`` chains: each chain
        keeps ``ceil(num_draws / num_chains)``, and starting by mass may add chains.
    :param num_chains: the least number of chains per point (at least 2, so that :math:`\hat R`
        exists).
    :param max_chains: the most chains per point that starting by mass may use (``init="modes"``).
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
    :param init: ``"modes"`` (chains at the local maxima by mass: module docstring),
        ``"prior"`` (independent prior draws), or a tensor ``(num_chains, N, K)`` of starting
        points. The maxima are found in every case, for the importance proposal.
    :param init_candidates: quasi-random optimisation starts per point.
    :param extra_candidates: further optimisation starts ``(L, N, K)``, e.g. draws of a trained
        guide at ``x``.
    :param num_importance: importance draws per point for the re-weighting and
        :math:`\log p(x)`.
    :param defensive: weight :math:`\alpha` of the prior in the importance proposal.
    :param dtype: ``"float64"`` or ``"float32"``.
    :param top_up: rounds of further chains at the maxima that no chain's draws cover
        (module docstring); 0: none.
    :param point_batch: sample this many points at a time (``None``: all at once). The points
        of one run share a step size, so one point whose posterior needs tiny steps (a cliff)
        slows every other point of its run to a crawl; smaller batches keep that to its batch.
    :param progress: show Pyro's progress bar.
    """
    num_draws = check_positive_int("num_draws", num_draws)
    num_chains = check_positive_int("num_chains", num_chains, minimum=2)
    max_chains = check_positive_int("max_chains", max_chains, minimum=num_chains)
    num_warmup = check_positive_int("num_warmup", num_warmup, minimum=0)
    max_tree_depth = check_positive_int("max_tree_depth", max_tree_depth)
    init_candidates = check_positive_int("init_candidates", init_candidates)
    num_importance = check_positive_int("num_importance", num_importance, minimum=10)
    top_up = check_positive_int("top_up", top_up, minimum=0)
    if point_batch is not None:
        point_batch = check_positive_int("point_batch", point_batch)
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
    n, k = x.shape[0], model.latent_dim
    if isinstance(init, torch.Tensor) and tuple(init.shape) != (num_chains, n, k):
        raise UsageError(f"init has shape {tuple(init.shape)}; expected ({num_chains}, {n}, {k})")
    if extra_candidates is not None:
        extra_candidates = torch.as_tensor(extra_candidates)
        if extra_candidates.dim() != 3 or tuple(extra_candidates.shape[1:]) != (n, k):
            raise UsageError(
                f"extra_candidates has shape {tuple(extra_candidates.shape)}; expected (L, {n}, {k})"
            )
    options = {
        "num_draws": num_draws,
        "num_chains": num_chains,
        "max_chains": max_chains,
        "num_warmup": num_warmup,
        "target_accept_prob": target_accept_prob,
        "max_tree_depth": max_tree_depth,
        "jit_compile": bool(jit_compile),
        "precondition": precondition,
        "init": init if isinstance(init, str) else "given",
        "init_candidates": init_candidates,
        "extra_candidates": 0 if extra_candidates is None else int(extra_candidates.shape[0]),
        "num_importance": num_importance,
        "defensive": defensive,
        "dtype": dtype,
        "top_up": top_up,
        "point_batch": point_batch,
    }
    work = copy.deepcopy(model).to(DTYPES[dtype])
    work.requires_grad_(False)
    x = x.detach().to(DTYPES[dtype])
    per_chain = math.ceil(num_draws / num_chains)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with pyro.validation_enabled(False):
            maxima = find_maxima(work, x, candidates=init_candidates, extra=extra_candidates, seed=seed)
            maxima = refine_maxima(work, x, maxima, seed=seed)
        if isinstance(init, torch.Tensor):
            z0 = init.detach().to(x.dtype)
        elif init == "prior":
            z0 = torch.randn(num_chains, n, k, dtype=x.dtype)
        else:
            z0 = starting_points(maxima, num_chains, max_chains, min_share=START_SHARE, seed=seed)
        segments = []
        z, diverging, stats = _sample_in_batches(
            work,
            x,
            z0,
            point_batch,
            num_samples=per_chain,
            num_warmup=num_warmup,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            jit_compile=jit_compile,
            precondition=precondition,
            segments=segments,
            progress=progress,
        )
        if top_up and segments:
            starts, rows = along_segments(work, x, segments)
            # Newton steps only: Adam's first steps are a fixed length, far wider than a needle
            maxima = add_starts(work, x, maxima, starts, rows, steps=0, seed=seed)
    stats["chains"] = int(z0.shape[0])
    attrs = {**provenance("nuts", seed, options), "sampler": stats}
    for round_ in range(top_up + 1):
        coverage = {}
        ref = from_draws(
            work,
            x,
            z,
            diverging=diverging,
            num_importance=num_importance,
            defensive=defensive,
            seed=seed,
            attrs=attrs,
            maxima=maxima,
            coverage=coverage,
        )
        starts = top_up_points(maxima, coverage["uncovered"], max_chains, min_share=START_SHARE)
        if round_ == top_up or starts is None:
            break
        # chains at the maxima no chain's draws cover, with no warm-up (the warm-up's early large
        # steps are what carried the first chains out of them): a fixed step in units of each
        # chain's Laplace scale (the first round's can be tiny, from one point at a cliff)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 1000 * (round_ + 1))
            with pyro.validation_enabled(False):
                z_more, div_more, more = _sample_in_batches(
                    work,
                    x,
                    starts.to(x.dtype),
                    point_batch,
                    step_sizes=[TOP_UP_STEP] * len(stats["step_sizes"]),
                    num_samples=per_chain,
                    num_warmup=0,
                    max_tree_depth=max_tree_depth,
                    jit_compile=jit_compile,
                )
        z, diverging = torch.cat([z, z_more]), torch.cat([diverging, div_more])
        stats["chains"] += int(starts.shape[0])
        stats["top_up_chains"] = stats.get("top_up_chains", 0) + int(starts.shape[0])
        for key in ("sampling_seconds", "num_grads", "divergent_transitions"):
            stats[key] += more[key]
    stats["total_seconds"] = time.perf_counter() - start
    ref.posterior.attrs["sampler"] = json.dumps(stats)
    return ref
