"""What the ``jobs`` stage writes for each job: the fit's summary, every test point's values, and
what it takes to rebuild the fitted model and guide without regenerating the data.

Every mean over test points is an :class:`~pyrofail.estimate.Estimate` whose standard error is
the sampling error over the test points (the spread of the per-point values over
:math:`\\sqrt N`) with the Monte Carlo error of the estimate added in quadrature: the error with
which the run knows the population value, which is what a decision depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyrofail.estimate import Estimate
from pyrofail.records.config import JobConfig
from pyrofail.records.schema import Record

__all__ = ["Build", "FailedJob", "FitMetrics", "JobRecord", "M2Metrics", "Restart", "TestPoints"]


@dataclass
class Restart(Record):
    """One restart of a fit: how it started, its final validation objective, whether it was
    selected, the step at which it diverged (``None``: it did not), its learned σ."""

    restart: int
    init: str
    selected: bool
    validation_objective: float | None
    diverged_at: int | None = None
    noise_scale: Any = None


@dataclass
class M2Metrics(Record):
    """The semi-supervised M2 model's measures (:mod:`pyrofail.analysis.semisupervised`)."""

    separation_ratio: float
    counterfactual_error_model: Estimate
    counterfactual_error_guide: Estimate
    mleo: Estimate
    mleo_class0: float
    mleo_class1: float
    accuracy: Estimate
    bayes_accuracy: float


@dataclass
class FitMetrics(Record):
    """The fitted model and guide on the job's test points (the semi-supervised M2 model has its
    own measures in ``semi_supervised`` instead of the ELBO, log p(x) and information).

    ``test_neg_log_px`` is exact (quadrature, ``exact=True``) at K ≤ 2 and importance-sampled
    from the guide otherwise, flagged when a point's PSIS k̂ exceeds 0.7 or the standard-error
    target was missed (``log_px_method``: ``"grid"`` or ``"is<draws>"``). ``mleo`` is
    KL(p_GT(x) ‖ p_θ(x)) over the same test points (zoo processes only)."""

    n_test: int
    test_neg_bound: Estimate
    test_neg_training_bound: Estimate
    test_neg_elbo: Estimate | None = None
    test_neg_log_px: Estimate | None = None
    log_px_method: str | None = None
    pmo_gap: Estimate | None = None
    mutual_information: list[Estimate] | None = None
    avg_mutual_information: Estimate | None = None
    aggregate_kl: Estimate | None = None  # runs with LiBI only (analysis.aggregate)
    mleo: Estimate | None = None
    truth_neg_log_px: Estimate | None = None
    noise_scale: Any = None
    trained_on: str | None = None
    pareto_k_bad: int | None = None  # importance-sampled log p(x): points with k̂ > 0.7
    semi_supervised: M2Metrics | None = None


@dataclass
class Build(Record):
    """What rebuilds the selected model and guide from their state dicts
    (:func:`pyrofail.training.build.learned_model` and ``build.guide``)."""

    latent_dim: int
    data_dim: int
    noise_scale: float
    learn_noise: bool
    likelihood: str
    noise_per_feature: bool
    num_classes: int | None
    hidden: list[int]
    activation: str
    guide: str
    guide_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRecord(Record):
    """``jobs/<job>/metrics.json``: written last, so a job with it is finished."""

    KIND = "job"
    VERSION = 2

    job: str
    config: JobConfig
    metrics: FitMetrics
    restarts: list[Restart]
    selected_restart: int
    history: dict[str, Any]
    build: Build
    figures: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def selected(self) -> Restart:
        return self.restarts[self.selected_restart]

    @property
    def diverged(self) -> int:
        return sum(r.diverged_at is not None for r in self.restarts)


@dataclass
class FailedJob(Record):
    """``jobs/<job>/failed.json``: a job whose every restart diverged, with the config that did
    (the same config diverges again; another one is fitted)."""

    KIND = "failed_job"
    VERSION = 1

    job: str
    config: JobConfig
    failed: str


@dataclass
class TestPoints(Record):
    """``jobs/<job>/test_points.json``: every test point's values, in the order of the test
    split, for paired comparisons between fits on the same points."""

    KIND = "test_points"
    VERSION = 2
    __test__ = False  # not a test class, for pytest

    neg_elbo: list[float]
    neg_bound: list[float]
    log_px: list[float]
    mutual_information: list[list[float]]
    log_px_stderr: list[float] | None = None
    pareto_k: list[float] | None = None
    truth_log_px: list[float] | None = None
    counterfactual_error: list[float] | None = None  # z by the model's exact posterior
    counterfactual_error_guide: list[float] | None = None  # z by the encoder (the paper's)
