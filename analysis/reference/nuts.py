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

**Points with one mode** (``unimodal="importance"``, the default). Where the maxima search
finds one maximum of non-negligible mass and importance sampling from its Laplace approximation
passes its checks (:mod:`pyrofail.analysis.reference.unimodal`: :math:`\hat k`, efficiency,
the standard error of :math:`\log p(x)`, no mass outside the maximum's basin, no cliff), the
point keeps those independent weighted draws and runs no chain; the others are sampled as above.

**Layout of the code.** The settings are one frozen dataclass
(:class:`~pyrofail.analysis.reference.settings.NutsSettings`), the steps functions of plain values
(:mod:`pyrofail.analysis.reference.steps`), the sampler Pyro's NUTS on the flat potential
(:mod:`pyrofail.analysis.reference.sampler`) and the statistics plain functions
(:mod:`pyrofail.analysis.reference.stats`); :func:`run` puts them together, and
:func:`nuts_reference` is :func:`run` with the settings as keyword options.
"""

from __future__ import annotations

import copy
import json
import time

import pyro
import torch

from pyrofail.analysis.reference import steps, unimodal
from pyrofail.analysis.reference.idata import provenance
from pyrofail.analysis.reference.maxima import curvature, find_maxima
from pyrofail.analysis.reference.reweight import Weighted, assemble
from pyrofail.analysis.reference.sampler import block_preconditioner, curvature_scales, sample_nuts
from pyrofail.analysis.reference.settings import NutsSettings
from pyrofail.analysis.reference.starts import starting_points
from pyrofail.errors import UsageError

__all__ = [
    "NutsSettings",
    "block_preconditioner",
    "curvature",
    "curvature_scales",
    "initial_points",
    "nuts_reference",
    "run",
    "sample_nuts",
]

MAX_CHAINS = NutsSettings.max_chains
START_SHARE = NutsSettings.start_share


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
    (:func:`~pyrofail.analysis.reference.maxima.find_maxima`), one chain at each of non-negligible
    Laplace mass and the rest by mass (:func:`~pyrofail.analysis.reference.starts.starting_points`);
    ``num_chains <= C <= max_chains``."""
    found = find_maxima(model, x, candidates=candidates, extra=extra, steps=steps, lr=lr, seed=seed)
    return starting_points(found, num_chains, max(num_chains, max_chains), min_share=START_SHARE, seed=seed)


def _timed(times: dict, name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
    return out


def _nuts_points(work, x, maxima, settings: NutsSettings, seed: int, given, progress: bool, times: dict):
    """Steps 3 to 6 on the points ``x``: ``(weighted, diagnostics, chains)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with pyro.validation_enabled(False):
            z0 = steps.first_starts(maxima, settings, seed=seed, given=given)
            chains = _timed(times, "sample", steps.sample_chains, work, x, z0, settings, progress=progress)
            if settings.top_up:
                maxima = _timed(
                    times, "divergences", steps.maxima_on_divergences, work, x, maxima, chains, seed=seed
                )
    batches = len(chains.stats["step_sizes"])
    for round_ in range(settings.top_up + 1):
        weighted = _timed(times, "reweight", steps.reweigh, work, x, chains, maxima, settings, seed=seed)
        starts = steps.top_up_starts(maxima, weighted, settings)
        if round_ == settings.top_up or starts is None:
            break
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 1000 * (round_ + 1))
            with pyro.validation_enabled(False):
                more = _timed(
                    times, "top_up", steps.sample_top_up, work, x, starts, settings, batches=batches
                )
        chains = chains.join(more)
    return weighted, _timed(times, "diagnostics", steps.diagnose, weighted, chains), chains


def _merge(n: int, parts: list) -> tuple:
    """Per-point parts ``(rows, z (C, S, R, K), lp, log_w (R, CS), log_px, se, diagnostics, diverging)``
    joined into ``N`` points."""
    c, s, _, k = parts[0][1].shape
    like = parts[0][1]
    z = like.new_zeros(c, s, n, k)
    lp = like.new_zeros(c, s, n)
    log_w = like.new_zeros(n, c * s, dtype=torch.float64)
    log_px, se = (torch.zeros(n, dtype=torch.float64) for _ in range(2))
    diverging = torch.zeros(c, s, n, dtype=torch.bool)
    width = max(p[6]["mode_mass"].shape[1] for p in parts)
    diagnostics = {}
    for rows, zp, lpp, lwp, lxp, sep, dp, divp in parts:
        z[:, :, rows], lp[:, :, rows], log_w[rows], log_px[rows], se[rows] = zp, lpp, lwp, lxp, sep
        diverging[:, :, rows] = divp
        for key, v in dp.items():
            if key not in diagnostics:
                shape = (n, width) if key == "mode_mass" else (n,)
                diagnostics[key] = torch.zeros(shape, dtype=torch.float64)
            v = torch.nn.functional.pad(v, (0, width - v.shape[1])) if key == "mode_mass" else v
            diagnostics[key][rows] = v.double()
    pooled = z.permute(2, 0, 1, 3).reshape(n, c * s, k)
    masses = {"log_px": log_px, "log_px_stderr": se}
    return Weighted(z, lp, pooled, None, None, None, log_w, masses, None), diagnostics, diverging


def run(
    model, x: torch.Tensor, settings: NutsSettings, *, seed: int = 0, init=None, extra=None, progress=False
):
    """The NUTS reference of ``model`` at every row of ``x`` with ``settings`` (module docstring):
    the steps of :mod:`pyrofail.analysis.reference.steps` in order. ``init`` ``(C, N, K)``: the
    first chains' starts (``settings.init == "given"``); ``extra`` ``(L, N, K)``: further
    optimisation starts. The caller's random state is left as it was."""
    n = x.shape[0]
    work = copy.deepcopy(model).to(settings.torch_dtype)
    work.requires_grad_(False)
    x = x.detach().to(settings.torch_dtype)
    times, start = {}, time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        with pyro.validation_enabled(False):
            maxima = _timed(times, "maxima", steps.search_maxima, work, x, settings, seed=seed, extra=extra)
    quick, rest = _timed(times, "unimodal", steps.split_unimodal, work, x, maxima, settings, seed=seed)
    parts, stats = [], {"sampling_seconds": 0.0, "num_grads": 0, "divergent_transitions": 0}
    chains = settings.num_chains
    if rest.numel():
        sub = slice(None) if rest.numel() == n else rest
        given = None if init is None else init[:, sub]
        weighted, diagnostics, ch = _nuts_points(
            work, x[sub], maxima[sub], settings, seed, given, progress, times
        )
        stats = ch.stats
        chains = int(ch.z.shape[0])
        masses = weighted.masses
        part = (rest, ch.z, weighted.lp, weighted.log_w, masses["log_px"], masses["log_px_stderr"])
        parts.append((*part, diagnostics, ch.diverging))
        if quick is None:  # every point by NUTS: as it was
            weighted, diverging = weighted, ch.diverging
    if quick is not None:
        z, lp, log_w, diagnostics = _timed(
            times, "unimodal", unimodal.draws, work, x, quick, chains, settings.per_chain, seed=seed
        )
        zero = torch.zeros(z.shape[:2] + (quick.rows.numel(),), dtype=torch.bool)
        parts.append((quick.rows, z, lp, log_w, quick.log_px, quick.log_px_stderr, diagnostics, zero))
    if quick is not None:
        weighted, diagnostics, diverging = _merge(n, parts)
    stats.setdefault("chains", chains)
    stats["importance_points"] = 0 if quick is None else int(quick.rows.numel())
    stats["step_seconds"] = times
    stats["total_seconds"] = time.perf_counter() - start
    options = settings.record(0 if extra is None else int(extra.shape[0]))
    attrs = {**provenance("nuts", seed, options), "sampler": stats}
    ref = assemble(weighted, x, diagnostics, attrs, diverging)
    ref.posterior.attrs["sampler"] = json.dumps(stats)
    return ref


def nuts_reference(
    model,
    x: torch.Tensor,
    *,
    seed: int = 0,
    init=None,
    extra_candidates: torch.Tensor | None = None,
    progress: bool = False,
    settings: NutsSettings | None = None,
    **options,
):
    r"""The reference posterior of ``model`` at every row of ``x`` by NUTS (module docstring):
    :func:`run` with ``settings``, or ``NutsSettings(**options)`` (every option and its default:
    :class:`~pyrofail.analysis.reference.settings.NutsSettings`).

    :param init: ``"modes"`` (the default), ``"prior"`` or a tensor ``(num_chains, N, K)`` of
        starting points.
    :param extra_candidates: further optimisation starts ``(L, N, K)``, e.g. draws of a trained
        guide at ``x``.
    :param progress: show Pyro's progress bar.
    """
    given = init if isinstance(init, torch.Tensor) else None
    if given is not None:
        options["init"] = "given"
    elif init is not None:
        options["init"] = init
    if settings is None:
        settings = NutsSettings.from_options(**options)
    elif options:
        raise UsageError(f"nuts_reference takes settings or options, not both: got {sorted(options)}")
    n, k = x.shape[0], model.latent_dim
    if given is not None and tuple(given.shape) != (settings.num_chains, n, k):
        raise UsageError(f"init has shape {tuple(given.shape)}; expected ({settings.num_chains}, {n}, {k})")
    if extra_candidates is not None:
        extra_candidates = torch.as_tensor(extra_candidates)
        if extra_candidates.dim() != 3 or tuple(extra_candidates.shape[1:]) != (n, k):
            raise UsageError(
                f"extra_candidates has shape {tuple(extra_candidates.shape)}; expected (L, {n}, {k})"
            )
    return run(model, x, settings, seed=seed, init=given, extra=extra_candidates, progress=progress)
