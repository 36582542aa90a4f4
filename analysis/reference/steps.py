r"""The steps of the NUTS reference, each a function of plain values (tensors, :class:`Maxima`,
:class:`Chains`, :class:`~pyrofail.analysis.reference.settings.NutsSettings`).

:func:`pyrofail.analysis.reference.nuts.nuts_reference` runs them in this order:

1. :func:`search_maxima`: the local maxima of :math:`\log p(x, z)` of every point and their
   Laplace masses, with the search started again from importance draws no maximum explains;
2. :func:`split_unimodal` (``unimodal="importance"``): points with one maximum of non-negligible
   mass are tried by importance sampling from their Laplace approximation
   (:mod:`pyrofail.analysis.reference.unimodal`); those whose weights pass need no chain;
3. :func:`first_starts` and :func:`sample_chains`: chains started at the maxima by mass, NUTS
   with warm-up; then :func:`maxima_on_divergences`: the search again from the divergent
   leapfrog steps;
4. :func:`reweigh`: the modes of the draws and the weights that give each mode its mass
   (:mod:`pyrofail.analysis.reference.reweight`);
5. :func:`top_up_starts` and :func:`sample_top_up` (``top_up`` rounds): chains at the maxima no
   draw covers, then :func:`reweigh` again on all chains;
6. :func:`diagnose` (the statistics: :math:`\hat R`, ESS, :math:`\hat k`,
   :mod:`pyrofail.analysis.reference.stats`) and the reference layout.

Steps 1 and 3 draw from torch's global generator: the caller seeds it (``nuts_reference`` does,
and leaves the caller's state as it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyrofail.analysis.reference import reweight, sampler, unimodal
from pyrofail.analysis.reference.maxima import Maxima, add_starts, along_segments, find_maxima, refine_maxima
from pyrofail.analysis.reference.settings import NutsSettings
from pyrofail.analysis.reference.starts import starting_points, top_up_points

__all__ = [
    "Chains",
    "diagnose",
    "first_starts",
    "maxima_on_divergences",
    "reweigh",
    "sample_chains",
    "sample_top_up",
    "search_maxima",
    "split_unimodal",
    "top_up_starts",
]

SUMMED = ("sampling_seconds", "num_grads", "divergent_transitions")


@dataclass
class Chains:
    """Draws ``z`` ``(C, S, N, K)``, divergence flags ``(C, S, N)``, the sampler's statistics
    and the divergent leapfrog steps ``segments`` (``(point, start, end)``, as
    :func:`pyrofail.analysis.reference.sampler.sample_nuts` gives them)."""

    z: torch.Tensor
    diverging: torch.Tensor
    stats: dict
    segments: list = field(default_factory=list)

    def join(self, more: Chains, *, top_up: bool = True) -> Chains:
        """These chains and ``more`` (for the same points), the statistics summed."""
        stats = dict(self.stats)
        for key in SUMMED:
            stats[key] = stats.get(key, 0) + more.stats[key]
        stats["chains"] = stats.get("chains", self.z.shape[0]) + int(more.z.shape[0])
        if top_up:
            stats["top_up_chains"] = stats.get("top_up_chains", 0) + int(more.z.shape[0])
        z, div = torch.cat([self.z, more.z]), torch.cat([self.diverging, more.diverging])
        return Chains(z, div, stats, self.segments + more.segments)


def search_maxima(model, x: torch.Tensor, settings: NutsSettings, *, seed: int, extra=None) -> Maxima:
    """Step 1: :func:`~pyrofail.analysis.reference.maxima.find_maxima` from
    ``settings.init_candidates`` quasi-random starts and ``extra`` ``(L, N, K)``, then
    :func:`~pyrofail.analysis.reference.maxima.refine_maxima`."""
    maxima = find_maxima(model, x, candidates=settings.init_candidates, extra=extra, seed=seed)
    return refine_maxima(model, x, maxima, seed=seed)


def split_unimodal(model, x, maxima: Maxima, settings: NutsSettings, *, seed: int):
    """Step 2: ``(quick, rest)``: the importance-sampled points that passed
    (:func:`pyrofail.analysis.reference.unimodal.try_points`, ``None`` when none did or
    ``settings.unimodal == "nuts"``) and the indices ``(R,)`` of the points left for NUTS."""
    every = torch.arange(x.shape[0])
    if settings.unimodal != "importance":
        return None, every
    candidates = unimodal.candidates(maxima, settings.start_share)
    if not bool(candidates.any()):
        return None, every
    quick = unimodal.try_points(
        model,
        x,
        maxima,
        candidates.nonzero().flatten(),
        num_importance=settings.num_importance,
        defensive=settings.defensive,
        seed=seed,
    )
    if quick is None:
        return None, every
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[quick.rows] = False
    return quick, every[keep]


def first_starts(maxima: Maxima, settings: NutsSettings, *, seed: int, given=None) -> torch.Tensor:
    """Step 3a: the first chains' starts ``(C, N, K)``: ``given``, prior draws (``init="prior"``,
    from the global generator) or by mass at the maxima
    (:func:`~pyrofail.analysis.reference.starts.starting_points`)."""
    n, _, k = maxima.z.shape
    if given is not None:
        return given.detach().to(maxima.z.dtype)
    if settings.init == "prior":
        return torch.randn(settings.num_chains, n, k, dtype=maxima.z.dtype)
    return starting_points(
        maxima, settings.num_chains, settings.max_chains, min_share=settings.start_share, seed=seed
    )


def sample_chains(model, x, z0: torch.Tensor, settings: NutsSettings, *, progress: bool = False) -> Chains:
    """Step 3b: NUTS from ``z0`` with warm-up, in batches of ``settings.point_batch`` points,
    keeping the divergent leapfrog steps."""
    segments = []
    z, div, stats = sampler.sample_in_batches(
        model,
        x,
        z0,
        settings.point_batch,
        num_samples=settings.per_chain,
        num_warmup=settings.num_warmup,
        target_accept_prob=settings.target_accept_prob,
        max_tree_depth=settings.max_tree_depth,
        jit_compile=settings.jit_compile,
        precondition=settings.precondition,
        segments=segments,
        max_divergent_steps=settings.max_divergent_steps,
        progress=progress,
    )
    stats["chains"] = int(z0.shape[0])
    return Chains(z, div, stats, segments)


def maxima_on_divergences(model, x, maxima: Maxima, chains: Chains, *, seed: int) -> Maxima:
    """Step 3c: ``maxima`` with those the best points of the divergent leapfrog steps climb to
    (:func:`~pyrofail.analysis.reference.maxima.along_segments`), by Newton steps only: Adam's
    first steps are a fixed length, far wider than a needle."""
    if not chains.segments:
        return maxima
    starts, rows = along_segments(model, x, chains.segments)
    return add_starts(model, x, maxima, starts, rows, steps=0, seed=seed)


def reweigh(model, x, chains: Chains, maxima: Maxima, settings: NutsSettings, *, seed: int):
    """Step 4: the draws' modes and weights (:func:`pyrofail.analysis.reference.reweight.weigh`)."""
    return reweight.weigh(
        model,
        x,
        chains.z,
        maxima=maxima,
        num_importance=settings.num_importance,
        defensive=settings.defensive,
        seed=seed,
    )


def top_up_starts(maxima: Maxima, weighted, settings: NutsSettings) -> torch.Tensor | None:
    """Step 5a: starts ``(C, N, K)`` at the maxima of at least ``start_share`` of the Laplace
    mass that no mode of the draws covers, or ``None`` when no point has one."""
    return top_up_points(maxima, weighted.uncovered, settings.max_chains, min_share=settings.start_share)


def sample_top_up(model, x, starts: torch.Tensor, settings: NutsSettings, *, batches: int) -> Chains:
    """Step 5b: chains from ``starts`` with no warm-up (the warm-up's early long steps are what
    carried the first chains out of these maxima): a fixed step of ``settings.top_up_step`` in
    units of each chain's Laplace scale, in the same ``batches`` of points as the first chains."""
    z, div, stats = sampler.sample_in_batches(
        model,
        x,
        starts.to(x.dtype),
        settings.point_batch,
        step_sizes=[settings.top_up_step] * batches,
        num_samples=settings.per_chain,
        num_warmup=0,
        max_tree_depth=settings.max_tree_depth,
        jit_compile=settings.jit_compile,
    )
    return Chains(z, div, stats)


def diagnose(weighted, chains: Chains) -> dict:
    """Step 6: the per-point diagnostics (:func:`pyrofail.analysis.reference.reweight.diagnose`)."""
    return reweight.diagnose(weighted, chains.diverging)
