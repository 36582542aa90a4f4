"""What the ``regression`` stage writes: Bayesian neural networks with latent input noise on one
regression process, one row per inference method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyrofail.estimate import Estimate
from pyrofail.records.schema import Record

__all__ = ["RegressionRecord", "RegressionRow"]


@dataclass
class RegressionRow(Record):
    """One method's measures (:data:`pyrofail.bnn.experiment.COLUMNS`), each ± its standard
    error; ``paired_diff``: its test log-likelihood minus the first method's, paired."""

    method: str
    seconds: float | None = None
    lam: float | None = None
    estimates: dict[str, Estimate] = field(default_factory=dict)


@dataclass
class RegressionRecord(Record):
    """``regression/<process>.json``."""

    KIND = "regression"
    VERSION = 2

    key: Any
    process: str
    rows: list[RegressionRow]
    figure: str | None = None
