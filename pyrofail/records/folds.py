"""Cross-fitting: the jobs of the folds of one fit, pooled so that every row is a test point.

With ``--folds F`` on a user's data, each fit (K, guide, objective, procedure) runs once per
fold: trained on the other folds, tested on its own. :func:`pool` turns the ``F`` fold jobs
into one: its per-point values are the folds' concatenated in fold order (every row of the
data once), its means and standard errors recomputed over all of them, so that paired
differences between two fits pair the same rows, and the stages after the fits — the diagnosis,
the findings and the report — read the pooled jobs as if one job had been tested on every row.
Measures that are not means over points (the restarts, the training history, the learned σ)
come from the first fold.

Example:
    >>> from pyrofail.records.folds import base_name
    >>> base_name("diabetes-K1-mean_field-elbo-fold3")
    'diabetes-K1-mean_field-elbo'
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from pyrofail.estimate import Estimate
from pyrofail.records.job import JobRecord, TestPoints
from pyrofail.records.posterior import Bias, Hardness, PosteriorRecord, Quality

__all__ = ["base_name", "is_folded", "pool"]

_FOLD = re.compile(r"-fold\d+$")


def base_name(job: str) -> str:
    """A fold job's name without its fold."""
    return _FOLD.sub("", job)


def is_folded(jobs: list[JobRecord]) -> bool:
    return any(r.config.fold is not None for r in jobs)


def _cat(lists):
    out = []
    for v in lists:
        out.extend(v)
    return out


def _pool_estimates(estimates: list[Estimate | None]) -> Estimate | None:
    """Independent means over disjoint points, as one mean over all of them."""
    if any(e is None for e in estimates):
        return None
    n = [e.n or 1 for e in estimates]
    total = sum(n)
    mean = sum(k * e.mean for k, e in zip(n, estimates)) / total
    se = None
    if all(e.stderr is not None for e in estimates):
        se = sum((k * e.stderr) ** 2 for k, e in zip(n, estimates)) ** 0.5 / total
    flags = "; ".join(dict.fromkeys(e.flag for e in estimates if e.flag)) or None
    return Estimate(mean, se, total, all(e.exact for e in estimates), flags)


def _points(parts: list[TestPoints]) -> TestPoints:
    fields = {}
    for name in TestPoints.__dataclass_fields__:
        values = [getattr(p, name) for p in parts]
        fields[name] = None if any(v is None for v in values) else _cat(values)
    return TestPoints(**fields)


def _job(name: str, parts: list[JobRecord], points: TestPoints | None) -> JobRecord:
    first = parts[0]
    m = first.metrics
    pooled = {
        "n_test": sum(p.metrics.n_test for p in parts),
        "test_neg_training_bound": _pool_estimates([p.metrics.test_neg_training_bound for p in parts]),
        "pareto_k_bad": None if m.pareto_k_bad is None else sum(p.metrics.pareto_k_bad or 0 for p in parts),
    }
    for key in (
        "test_neg_bound",
        "test_neg_elbo",
        "test_neg_log_px",
        "pmo_gap",
        "mleo",
        "avg_mutual_information",
    ):
        pooled[key] = _pool_estimates([getattr(p.metrics, key) for p in parts])
    if m.mutual_information is not None:
        k = len(m.mutual_information)
        pooled["mutual_information"] = [
            _pool_estimates([p.metrics.mutual_information[i] for p in parts]) for i in range(k)
        ]
    if points is not None and points.log_px:
        lp = torch.tensor(points.log_px, dtype=torch.float64)
        elbo = torch.tensor(points.neg_elbo, dtype=torch.float64)
        exact = m.test_neg_log_px is not None and m.test_neg_log_px.exact
        flag = pooled["test_neg_log_px"].flag if pooled["test_neg_log_px"] else None
        pooled["test_neg_log_px"] = Estimate.of(-lp, exact=exact, flag=flag)
        pooled["test_neg_elbo"] = Estimate.of(elbo)
        pooled["pmo_gap"] = Estimate.of(lp + elbo, flag=flag)
        pooled["test_neg_bound"] = Estimate.of(torch.tensor(points.neg_bound, dtype=torch.float64))
    config = first.config.replace(
        data_options={k: v for k, v in first.config.data_options.items() if k != "fold"}
    )
    return replace(
        first,
        job=name,
        config=config,
        metrics=replace(m, **pooled),
        seconds=sum(p.seconds or 0.0 for p in parts),
        # the first fold's figures stand for the fit's (paths from the run folder)
        figures=[f"jobs/{first.job}/{f}" for f in first.figures],
    )


def _bias(parts: list[Bias], usable: list[bool]) -> Bias:
    per_point = {k: _cat(p.per_point[k] for p in parts) for k in parts[0].per_point}
    keep = torch.tensor(usable, dtype=torch.bool)
    mean = {
        k: Estimate.of(torch.tensor(v, dtype=torch.float64)[keep])
        for k, v in per_point.items()
        if k != "pareto_k"
    }
    threshold = parts[0].pareto_k_threshold
    k_hat = torch.tensor(per_point["pareto_k"], dtype=torch.float64)[keep]
    mean["pareto_k_bad_share"] = Estimate.of((k_hat > threshold).double())
    median = float(k_hat.median()) if k_hat.numel() else None
    return Bias(mean, per_point, median, threshold)


def _hardness(parts: list[Hardness]) -> Hardness:
    kl = torch.tensor(_cat(p.per_point for p in parts), dtype=torch.float64)
    hard = parts[0].hard_kl
    fit = all(p.loc is not None for p in parts)
    return Hardness(
        Estimate.of(kl),
        Estimate.of((kl > hard).double()),
        hard,
        kl.tolist(),
        _cat(p.loc for p in parts) if fit else None,
        _cat(p.scale for p in parts) if fit else None,
    )


def _posterior(name: str, parts: list[PosteriorRecord]) -> PosteriorRecord:
    usable = _cat(p.usable for p in parts)
    n = sum(p.n_points for p in parts)
    ok = _cat(p.quality.ok for p in parts)
    summary = {
        k: sum(p.quality.summary.get(k, 0.0) * p.n_points for p in parts) / n
        for k in parts[0].quality.summary
    }
    quality = Quality(parts[0].quality.method, ok, summary, parts[0].quality.limits)
    truth = None if any(p.truth is None for p in parts) else _bias([p.truth for p in parts], usable)
    best = (
        None
        if any(p.best_mean_field is None for p in parts)
        else _hardness([p.best_mean_field for p in parts])
    )
    return PosteriorRecord(
        key=[p.key for p in parts],
        job=name,
        reference_method=parts[0].reference_method,
        n_points=n,
        usable=usable,
        excluded=sum(p.excluded for p in parts),
        reasons=_cat(p.reasons for p in parts),
        quality=quality,
        model=_bias([p.model for p in parts], usable),
        truth=truth,
        best_mean_field=best,
        pmo_gap_all_test_points=_cat(p.pmo_gap_all_test_points for p in parts),
    )


def pool(jobs: list[JobRecord], points: dict, posterior: dict):
    """``(jobs, points, posterior)`` with the fold jobs of each fit pooled into one (module
    docstring); a fit missing a fold keeps its folds unpooled (an unfinished run)."""
    groups: dict[str, list[JobRecord]] = {}
    for r in jobs:
        groups.setdefault(base_name(r.job), []).append(r)
    folds = max((r.config.folds for r in jobs), default=1)
    out_jobs, out_points, out_posterior = [], {}, {}
    for name, parts in groups.items():
        parts = sorted(parts, key=lambda r: r.config.fold or 0)
        if len(parts) < folds or folds == 1:
            out_jobs += parts
            out_points.update({r.job: points[r.job] for r in parts if r.job in points})
            out_posterior.update({r.job: posterior[r.job] for r in parts if r.job in posterior})
            continue
        pooled_points = (
            _points([points[r.job] for r in parts]) if all(r.job in points for r in parts) else None
        )
        out_jobs.append(_job(name, parts, pooled_points))
        if pooled_points is not None:
            out_points[name] = pooled_points
        if all(r.job in posterior for r in parts):
            out_posterior[name] = _posterior(name, [posterior[r.job] for r in parts])
    return out_jobs, out_points, out_posterior
