"""What the ``findings`` stage decides across jobs: the orderings of Table 1, which K each
criterion chooses, which guide fits best, LiBI against joint training, and the M2 models'
counterfactuals — each a paired difference over the same test points with its standard error
and a decision (``"yes"``/``"no"``/``"tie"``, or ``"greater"``/``"less"``/``"tie"``), never a
sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyrofail.estimate import Estimate
from pyrofail.records.schema import Record

__all__ = [
    "ChoosingK",
    "Difference",
    "Findings",
    "GuideRanking",
    "LibiComparison",
    "LibiRow",
    "Ordering",
    "Table1Cell",
]


@dataclass
class Difference(Record):
    """A labelled paired difference and its decision (``Estimate.verdict`` with ``margin``)."""

    label: str
    estimate: Estimate
    verdict: str
    job: str | None = None


@dataclass
class Ordering(Record):
    """One ordering Table 1 is about, for one process. ``claim`` (a code the report words):
    ``"elbo-prefers-larger-k"``, ``"iwae-flat-in-k"``, ``"information-falls-with-k"`` (with
    ``objective``), ``"iwae-px-higher"``. ``outcome``: ``"yes"`` when every difference
    supports it beyond two standard errors (and ``margin``), ``"no"`` when one contradicts it
    as clearly, else ``"tie"``."""

    claim: str
    process: str
    outcome: str
    differences: list[Difference]
    objective: str | None = None
    margin: float = 0.0


@dataclass
class Table1Cell(Record):
    """One cell of Table 1: ours (mean ± standard error over the test points) and the paper's
    mean ± sd over its restarts; ``inside`` the paper's mean ± 2 sd; ``calibrated``: a cell the
    process's constants were chosen to match (not an independent check)."""

    process: str
    k: int
    objective: str
    metric: str
    value: Estimate | None
    paper: list[float] | None
    inside: bool | None
    calibrated: bool
    noise_scale: float | None = None
    noise_learned: bool | None = None


@dataclass
class ChoosingK(Record):
    """For one process, guide and objective run at several K: the test −ELBO and −log p(x) at
    each K, the K each picks and the Ks that tie with the pick."""

    process: str
    guide: str
    objective: str
    ks: list[int]
    neg_elbo: list[Estimate]
    neg_log_px: list[Estimate]
    elbo_pick: int
    elbo_ties: list[int]
    px_pick: int
    px_ties: list[int]


@dataclass
class GuideRanking(Record):
    """For one process, K and objective run with several guides: the guide with the highest
    test log p(x), and each other guide's difference from it (best − other)."""

    process: str
    k: int
    objective: str
    best: str
    best_log_px: Estimate
    others: list[Difference]


@dataclass
class LibiRow(Record):
    """A fit of the same process and K beside a LiBI fit: its MLEO, PMO gap, aggregate KL,
    avg_i I(x; z_i), and ``delta``: LiBI's MLEO minus its own (``None`` for the LiBI fit)."""

    job: str
    mleo: Estimate | None
    pmo_gap: Estimate | None
    aggregate_kl: Estimate | None
    avg_mutual_information: Estimate | None
    delta: Difference | None = None


@dataclass
class LibiComparison(Record):
    libi: str
    rows: list[LibiRow]


@dataclass
class Findings(Record):
    """``findings.json``."""

    KIND = "findings"
    VERSION = 1

    orderings: list[Ordering] = field(default_factory=list)
    table1: list[Table1Cell] = field(default_factory=list)
    choosing_k: list[ChoosingK] = field(default_factory=list)
    guides: list[GuideRanking] = field(default_factory=list)
    libi: list[LibiComparison] = field(default_factory=list)
    m2_counterfactual: list[Difference] = field(default_factory=list)  # z by the model's posterior
    m2_counterfactual_guide: list[Difference] = field(default_factory=list)  # z by the encoder
    m2_baseline: str | None = None
