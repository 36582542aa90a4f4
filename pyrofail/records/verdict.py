"""What the ``diagnosis`` stage decides: per process (or per K on a user's data) which failure
condition of Yacoby, Pan & Doshi-Velez (2020) holds, as decisions and numbers — no sentences;
the report writes those (``pyrofail.report``).

Codes a renderer turns into words:

* ``failure``: ``"data distribution"`` (Cx1 and Cx2), ``"latent space"`` (Cz1 and Cz2),
  ``"none"``, ``"undetermined"`` or ``"not diagnosed"``;
* ``reason`` (why, where the failure alone does not say): ``"no-trade"`` (Cx1 holds but the
  MFG-VAE has not simplified its posteriors), ``"px-unclear"`` (simpler posteriors, the p(x)
  cost inside noise), ``"mfg-is-best"`` (on a user's data the MFG-VAE itself fits p(x) best:
  there is no trade to detect), ``"collapsed"`` (on a user's data the best-fitting model
  ignores its latent, so its posteriors say nothing), ``"too-few-rows"``, ``"no-mfg-job"``,
  ``"no-usable-points"``, ``"no-references"``;
* ``flags``: :class:`Flag` s, each a ``kind`` — ``"truth-started-worse"`` (the restarts
  started at the ground truth ended worse than the random ones), ``"still-improving"`` (the
  selected restart's validation objective was still rising at the end), ``"comparator-far"``
  (the comparator's own MLEO is above the margin) — with the job and its numbers;
* ``guidelines``: keys of the practitioners' guidelines of the paper (``"flexible"``,
  ``"check"``, ``"sigma"``, ``"latent"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyrofail.estimate import Estimate
from pyrofail.records.schema import Record

__all__ = ["Evidence", "FailureMapRow", "Flag", "Side", "Verdict", "Verdicts"]


@dataclass
class Side(Record):
    """One fit in the evidence: KL* of its model's posteriors, the share of points where it is
    above the cut, its MLEO (over the test points), its guide's PMO gap (at the analysis
    points; on the hard and easy points; the share on hard points) and how far its posteriors
    moved from the truth's (energy distance)."""

    job: str
    kl_star: Estimate
    share_hard: Estimate
    mleo: Estimate
    pmo_gap: Estimate
    pmo_gap_hard: float | None = None
    pmo_gap_easy: float | None = None
    pmo_share_hard: float | None = None
    posterior_shift: Estimate | None = None


@dataclass
class Evidence(Record):
    """The numbers the conditions are decided on.

    ``truth_kl``/``truth_share_hard``: KL* of the ground truth's (or the stand-in's) posteriors
    and the share of points above ``hard_kl``. ``cx1_share``: the share Cx1 asks for, from
    ``cost_error`` (the sampling error over the analysis points of the hard posteriors' cost,
    KL* where it exceeds ``hard_kl``);
    ``cx1_reachable`` is false when even every point being hard would not move it measurably.
    ``simpler``: KL*_truth − KL*_MFG, paired over the usable analysis points. ``px_cost``:
    MLEO_MFG − MLEO_comparator, paired over the test points. ``rows_needed``: the test points
    at which a ``margin_nats`` difference in p(x) would be detected (two-sided 5%, power 80%)."""

    n_points: int
    n_test: int
    hard_kl: float
    margin_nats: float
    truth_kl: Estimate
    truth_share_hard: Estimate
    cx1_share: float
    cost_error: float
    mean_field: Side
    richer: Side | None
    simpler: Estimate
    px_cost: Estimate
    rows_needed: int | None = None
    cx1_reachable: bool = True


@dataclass
class Flag(Record):
    """A warning about one fit: its ``kind`` (module docstring), the job, the numbers."""

    kind: str
    job: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict(Record):
    """The decision for one process (``k``: its true K) or, on a user's data, one K.

    ``reference``: ``"truth"``, or the job of the best-fitting model that stands in for it.
    ``conditions``: ``Cx1``, ``Cx2``, ``Cz2`` (``None`` where the run cannot tell)."""

    name: str
    k: int
    reference: str
    failure: str
    reason: str | None = None
    conditions: dict[str, bool | None] = field(default_factory=dict)
    evidence: Evidence | None = None
    flags: list[Flag] = field(default_factory=list)
    guidelines: list[str] = field(default_factory=list)
    excluded_points: int = 0

    @property
    def has_truth(self) -> bool:
        return self.reference == "truth"

    def sentences(self) -> list[str]:
        """The verdict in words, as the report writes it (:mod:`pyrofail.report.diagnosis`)."""
        from pyrofail.report.diagnosis import sentences

        return sentences(self)


@dataclass
class FailureMapRow(Record):
    """One process at one σ of its truth, for the failure map."""

    process: str
    sigma: float
    failure: str
    mleo_mfg: Estimate
    mleo_other: Estimate | None
    other: str | None
    px_cost: Estimate
    share_hard: Estimate
    cx1_share: float
    pmo_gap: Estimate


@dataclass
class Verdicts(Record):
    """``verdicts.json``: every verdict of the run, and the failure map over σ per process."""

    KIND = "verdicts"
    VERSION = 1

    verdicts: dict[str, Verdict]
    failure_map: dict[str, list[FailureMapRow]] = field(default_factory=dict)
