"""Records for tests, built through the record classes (never as hand-written dicts), and a run
folder that holds them, so that a stage or a renderer can be tested on chosen numbers."""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.estimate import Estimate
from pyrofail.presets import PRESETS
from pyrofail.records import Build, FitMetrics, JobRecord, Restart, RunFolder, TestPoints
from pyrofail.records.config import JobConfig
from pyrofail.records.folder import job_id
from pyrofail.runs import atomic_write_json

__all__ = ["estimate", "fit_metrics", "job", "points", "run_folder"]


def estimate(mean: float, stderr: float = 0.01, n: int = 100) -> Estimate:
    return Estimate(float(mean), float(stderr), n)


def fit_metrics(**given) -> FitMetrics:
    """A job's metrics: every mean at 0 ± 0.01 over 100 points unless given (numbers become
    :class:`Estimate` s with that error)."""
    values = {
        "n_test": 100,
        "test_neg_bound": 0.0,
        "test_neg_training_bound": 0.0,
        "test_neg_elbo": 0.0,
        "test_neg_log_px": 0.0,
        "log_px_method": "grid",
        "pmo_gap": 0.0,
        "avg_mutual_information": 0.0,
        "mleo": 0.0,
    }
    values.update(given)
    out = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and key not in ("n_test", "pareto_k_bad"):
            value = estimate(value)
        out[key] = value
    out.setdefault("mutual_information", [out["avg_mutual_information"]])
    return FitMetrics(**out)


def job(
    process="figure8", k=1, guide="mean_field", objective="elbo", procedure="joint", config=None, **metrics
):
    """A finished job's record with its config (``config`` adds to it) and metrics."""
    given = dict(process=process, latent_dim=k, guide=guide, objective=objective, procedure=procedure)
    cfg = JobConfig(**{**given, **(config or {})})
    restarts = [Restart(0, "random", True, -1.0)]
    build = Build(k, 2, 0.1, False, "gaussian", False, None, [8], "leaky_relu", guide)
    return JobRecord(job_id(cfg), cfg, fit_metrics(**metrics), restarts, 0, {}, build)


def points(log_px=None, neg_elbo=None, neg_bound=None, mutual_information=None, **more) -> TestPoints:
    """Per-point values (lists or tensors); missing ones are zeros of the same length."""
    given = [v for v in (log_px, neg_elbo, neg_bound, mutual_information) if v is not None]
    n = len(given[0]) if given else 0

    def as_list(v):
        return torch.as_tensor(v, dtype=torch.float64).tolist() if v is not None else [0.0] * n

    mi = mutual_information if mutual_information is not None else [[0.0]] * n
    return TestPoints(
        neg_elbo=as_list(neg_elbo),
        neg_bound=as_list(neg_bound),
        log_px=as_list(log_px),
        mutual_information=torch.as_tensor(mi, dtype=torch.float64).tolist(),
        **more,
    )


def run_folder(root: Path, jobs: list[JobRecord], test_points: dict | None = None, **options) -> RunFolder:
    """A run folder holding ``jobs`` (finished) and their ``test_points`` (``{job: TestPoints}``)."""
    root = Path(root)
    configs = [r.config.to_dict() for r in jobs]
    options = {**PRESETS["tiny"], "preset": "tiny", "reference": None, **options}
    atomic_write_json(root / "config.json", {"format": 2, "options": options, "jobs": configs})
    folder = RunFolder.open(root)
    for r in jobs:
        folder.write(r, folder.job_dir(r.job) / "metrics.json")
        if test_points and r.job in test_points:
            folder.write(test_points[r.job], folder.job_dir(r.job) / "test_points.json")
    return folder
