"""What the ``downstream`` stage writes: what a failure costs in the tasks VAEs are used for.

Per job (``jobs/<job>/downstream.json``) its measures; per process the truth's own
(``truth/<process>/downstream.json``); per run (``downstream.json``) every fit against the
MFG-VAE (or, on a user's data, the plain VAE), each a paired difference over the same points
or draws with its standard error and a decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyrofail.estimate import Estimate
from pyrofail.records.findings import Difference
from pyrofail.records.schema import Record

__all__ = [
    "Attack",
    "DataTasks",
    "Disentanglement",
    "DownstreamSummary",
    "JobTasks",
    "LearnedNoise",
    "Probe",
    "ProcessComparison",
    "TruthTasks",
]


@dataclass
class Disentanglement(Record):
    """MIG and DCI of a code about the true factors (:mod:`pyrofail.analysis.downstream`):
    ``defined`` false (with a ``reason``) where a score needs more codes or factors than there
    are; ``protocol`` and how the factors were discretised, as the report must say."""

    defined: bool
    protocol: str
    factors: str | None = None
    reason: str | None = None
    mig: Estimate | None = None
    disentanglement: Estimate | None = None
    completeness: Estimate | None = None
    informativeness: Estimate | None = None
    informativeness_kind: str | None = None
    n_points: int | None = None


@dataclass
class Attack(Record):
    """The encoder attack at one radius ``eps`` (in units of the data's scale; ``radius`` in
    the data's units): KL(q(z|x) ‖ q(z|x + δ)) per attacked point and its mean, the truth's
    exact posterior shift under the same δ (where the truth's posterior is exact), and the
    decoded encoder mean's error under the attack against its clean error."""

    eps: float
    radius: float
    kl: list[float]
    mean: Estimate
    truth_kl: list[float] | None = None
    denoise_error: Estimate | None = None
    clean_error: Estimate | None = None


@dataclass
class LearnedNoise(Record):
    """The learned σ against the truth's: the selected fit's, each finished restart's, their
    mean ± standard error, and selected / truth (below 1: noise learned as signal)."""

    selected: float
    restart_values: list[float]
    over_restarts: Estimate | None
    truth: float
    ratio: float


@dataclass
class JobTasks(Record):
    """``jobs/<job>/downstream.json`` on a zoo process."""

    KIND = "downstream_job"
    VERSION = 3

    key: Any
    job: str
    total_mutual_information: Estimate
    robustness: list[Attack]
    disentanglement: Disentanglement | None = None
    auroc: Estimate | None = None
    scores_inliers: list[float] | None = None
    scores_outliers: list[float] | None = None
    noise: LearnedNoise | None = None


@dataclass
class TruthTasks(Record):
    """``truth/<process>/downstream.json``: the truth's own answers (its exact posterior means'
    MIG/DCI, its AUROC), the off-manifold points every job is scored on, the data's scale."""

    KIND = "downstream_truth"
    VERSION = 3

    key: Any
    scale: float
    outliers_x: list[list[float]] | None = None
    disentanglement: Disentanglement | None = None
    auroc: Estimate | None = None


@dataclass
class Probe(Record):
    """A linear classifier on the encoder means: its test accuracy at each attack radius,
    and which test points it got right (for paired comparisons)."""

    eps: list[float]
    accuracy: list[Estimate]
    correct: list[list[int]]


@dataclass
class DataTasks(Record):
    """``jobs/<job>/downstream.json`` on a user's data set."""

    KIND = "downstream_data"
    VERSION = 3

    key: Any
    job: str
    total_mutual_information: Estimate
    consistency: Estimate
    consistency_per_draw: list[float]
    probe: Probe | None = None


@dataclass
class ProcessComparison(Record):
    """One process (or data set): the fit every other is compared with (``baseline``: the
    MFG-VAE at the true K, or the plain VAE on a data set), and each fit's paired differences
    from it, by task (``against[job][task]``; ``"truth"``: the truth's exact posterior)."""

    baseline: str | None
    data: bool = False
    against: dict[str, dict[str, Difference]] = field(default_factory=dict)


@dataclass
class DownstreamSummary(Record):
    """``downstream.json``."""

    KIND = "downstream"
    VERSION = 3

    processes: dict[str, ProcessComparison]
