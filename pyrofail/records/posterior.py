"""What the ``bias`` stage writes: each guide and model against the reference posteriors, and how
hard the ground truth's posteriors are for a mean-field Gaussian (KL*), at the analysis points.

Every mean is over the *usable* analysis points (those whose references pass the quality gate),
with the sampling standard error over those points; per-point values keep every point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pyrofail.estimate import Estimate
from pyrofail.records.schema import Record

__all__ = ["Bias", "Hardness", "PosteriorRecord", "Quality", "TruthHardness"]


@dataclass
class Quality(Record):
    """A reference's quality gate: its method, whether each point passes, the share of points
    failing each check (``"any"``: failing at least one) and the checks' limits."""

    method: str
    ok: list[bool]
    summary: dict[str, float]
    limits: dict[str, float]


@dataclass
class Hardness(Record):
    """KL* per point — the smallest reverse KL any mean-field Gaussian reaches from the
    posterior — its mean, and the share of points above ``hard_kl`` (a Bernoulli mean, with
    its standard error); the best Gaussians' ``loc``/``scale`` where kept."""

    mean: Estimate
    share_hard: Estimate
    hard_kl: float
    per_point: list[float]
    loc: list[list[float]] | None = None
    scale: list[list[float]] | None = None

    @classmethod
    def of(cls, best: dict, keep_fit: bool = False) -> Hardness:
        """From :func:`pyrofail.analysis.hardness.best_mean_field`'s result."""
        kl = torch.as_tensor(best["kl"], dtype=torch.float64)
        return cls(
            mean=Estimate.of(kl),
            share_hard=Estimate.of((kl > best["hard_kl"]).double()),
            hard_kl=float(best["hard_kl"]),
            per_point=kl.tolist(),
            loc=best["loc"].tolist() if keep_fit else None,
            scale=best["scale"].tolist() if keep_fit else None,
        )


@dataclass
class TruthHardness(Record):
    """``truth/<process>/hardness.json``: KL* of the ground truth's posteriors."""

    KIND = "hardness"
    VERSION = 2

    key: Any
    method: str
    quality: Quality
    best_mean_field: Hardness


@dataclass
class Bias(Record):
    """One guide against one reference: every quantity per point, and its mean ± standard
    error over the usable points (``pareto_k_bad_share``: the share of points whose PSIS k̂
    is above ``pareto_k_threshold``; ``pareto_k_median`` its median)."""

    mean: dict[str, Estimate]
    per_point: dict[str, list[float]]
    pareto_k_median: float | None = None
    pareto_k_threshold: float | None = None


@dataclass
class PosteriorRecord(Record):
    """``jobs/<job>/posterior.json``: the job's guide against its own model's reference
    (``model``) and, at the truth's K, against the truth's (``truth``, with the posterior
    shift of the learned model); KL* of its model; the PMO gap at every test point."""

    KIND = "posterior"
    VERSION = 2

    key: Any
    job: str
    reference_method: str
    n_points: int
    usable: list[bool]
    excluded: int
    reasons: list[str]
    quality: Quality
    model: Bias
    truth: Bias | None
    best_mean_field: Hardness | None
    pmo_gap_all_test_points: list[float]

    def usable_values(self, values) -> list:
        """``values`` (one per analysis point) at the usable points."""
        return [v for v, ok in zip(values, self.usable) if ok]
