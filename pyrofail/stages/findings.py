"""Stage ``findings``: what the run finds across its jobs, decided once, as records.

* Table 1 of Yacoby et al. (2020): our cells beside the paper's, and whether each lies inside
  the paper's mean ± 2 sd — counted apart for the cells the processes' constants were
  calibrated to match (:data:`pyrofail.presets.PAPER_TABLE1_CALIBRATED`) and the independent
  ones; the orderings the table is about, each a paired difference over the test points;
* which latent dimension the ELBO and log p(x) choose, per process, guide and objective;
* which guide gives the highest test log p(x), per process, K and objective;
* LiBI against joint training of the same process and K (MLEO, paired);
* the semi-supervised M2 fits' counterfactual errors against the MFG M2 (paired).

A difference within two paired standard errors is a tie.

Reads: ``jobs/<job>/{metrics.json, test_points.json}``. Writes: ``findings.json``
(:class:`~pyrofail.records.findings.Findings`).
"""

from __future__ import annotations

import torch

from pyrofail.analysis.diagnose import MARGIN_NATS
from pyrofail.estimate import Estimate
from pyrofail.presets import PAPER_TABLE1, PAPER_TABLE1_CALIBRATED
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.findings import (
    ChoosingK,
    Difference,
    Findings,
    GuideRanking,
    LibiComparison,
    LibiRow,
    Ordering,
    Table1Cell,
)
from pyrofail.records.folder import process_id

__all__ = ["choosing_k", "guides_compared", "libi", "orderings", "run", "table1"]


def _procedure(config: dict) -> str:
    return config.procedure


def trained_by(config: dict) -> str:
    """The objective, and the procedure where it is not the usual joint training."""
    procedure = _procedure(config)
    return config.objective if procedure == "joint" else f"{config.objective} ({procedure})"


class _Points:
    """Per-point values of the jobs (``test_points.json``, cross-fitted folds pooled)."""

    def __init__(self, values: dict):
        self.values = values

    def has(self, job: JobRecord, key: str) -> bool:
        record = self.values.get(job.job)
        return record is not None and bool(getattr(record, key))

    def __call__(self, job: JobRecord, key: str) -> torch.Tensor:
        """A job's per-point ``key``; the mutual information averaged over latent dimensions."""
        v = torch.as_tensor(getattr(self.values[job.job], key), dtype=torch.float64)
        return v.mean(-1) if v.dim() == 2 else v

    def mc_error(self, job: JobRecord) -> float:
        """The Monte Carlo error of a job's mean test log p(x) (0 for quadrature)."""
        se = self.values[job.job].log_px_stderr
        return (
            0.0 if not se else float(torch.as_tensor(se, dtype=torch.float64).pow(2).sum().sqrt() / len(se))
        )

    def diff(self, a, b, key, label, sign=1.0, margin=0.0) -> Difference:
        d = Estimate.paired(sign * self(a, key), sign * self(b, key))
        return Difference(label, d, d.verdict(margin), job=a.job)


def _table1_job(r: JobRecord) -> bool:
    """A job of Table 1's kind: the mean-field guide trained jointly."""
    return r.config.guide == "mean_field" and _procedure(r.config) == "joint"


def _index(jobs: list[JobRecord]) -> dict:
    return {
        (process_id(r.config), r.config.latent_dim, r.config.objective): r for r in jobs if _table1_job(r)
    }


def table1(jobs: list[JobRecord]) -> list[Table1Cell]:
    """Every cell of Table 1 the run has a job for."""
    idx = _index(jobs)
    cells = []
    for (process, k, objective, metric), ref in PAPER_TABLE1.items():
        job = idx.get((process, k, objective))
        if job is None:
            continue
        m = job.metrics
        value = m.test_neg_bound if metric == "neg_bound" else m.avg_mutual_information
        inside = None if value is None else abs(value.mean - ref[0]) <= 2 * ref[1]
        sigma = None if m.noise_scale is None else float(torch.as_tensor(m.noise_scale).double().mean())
        learned = bool(job.config.learn_noise or job.config.noise_per_feature)
        cells.append(
            Table1Cell(
                process,
                k,
                objective,
                metric,
                value,
                list(ref),
                inside,
                (process, k, objective, metric) in PAPER_TABLE1_CALIBRATED,
                sigma,
                learned,
            )
        )
    return cells


def _ordering(claim, process, diffs, objective=None, margin=0.0) -> Ordering:
    """``"yes"`` when each difference is above ``-margin`` by two standard errors, ``"no"``
    when one is below it by as much, ``"tie"`` otherwise."""
    sides = {Estimate(d.estimate.mean + margin, d.estimate.stderr).verdict() for d in diffs}
    outcome = "no" if "less" in sides else "tie" if "tie" in sides else "yes"
    return Ordering(claim, process, outcome, diffs, objective, margin)


def orderings(jobs: list[JobRecord], points: _Points) -> list[Ordering]:
    """The orderings Table 1 is about (see :class:`~pyrofail.records.findings.Ordering`)."""
    idx = {key: r for key, r in _index(jobs).items() if r.job in points.values}
    out = []
    for process in ("figure8", "clusters"):
        e = {k: idx.get((process, k, "elbo")) for k in (1, 2, 3)}
        w = {k: idx.get((process, k, "iwae")) for k in (1, 2, 3)}
        if all(e.values()):
            diffs = [points.diff(e[1], e[k], "neg_elbo", f"K=1 − K={k}") for k in (2, 3)]
            out.append(_ordering("elbo-prefers-larger-k", process, diffs))
        if all(w.values()):
            diffs = [points.diff(w[k], w[1], "neg_bound", f"K={k} − K=1") for k in (2, 3)]
            out.append(_ordering("iwae-flat-in-k", process, diffs, margin=MARGIN_NATS))
        for objective in ("elbo", "iwae"):
            t = {k: idx.get((process, k, objective)) for k in (1, 2, 3)}
            if all(t.values()):
                diffs = [
                    points.diff(t[1], t[2], "mutual_information", "K=1 − K=2"),
                    points.diff(t[2], t[3], "mutual_information", "K=2 − K=3"),
                ]
                out.append(_ordering("information-falls-with-k", process, diffs, objective=objective))
        if e[1] and w[1] and points.has(e[1], "log_px"):
            out.append(
                _ordering("iwae-px-higher", process, [points.diff(w[1], e[1], "log_px", "IWAE − VAE")])
            )
    return out


def choosing_k(jobs: list[JobRecord], points: _Points) -> list[ChoosingK]:
    """Per process, guide and objective run at several K: the K each criterion picks."""
    groups: dict[tuple, list[JobRecord]] = {}
    for r in jobs:
        if points.has(r, "log_px"):
            groups.setdefault((process_id(r.config), r.config.guide, trained_by(r.config)), []).append(r)
    out = []
    for (process, guide, objective), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.config.latent_dim)
        picks = []
        for key, metric in (("neg_elbo", "test_neg_elbo"), ("log_px", "test_neg_log_px")):
            best = min(rs, key=lambda r: getattr(r.metrics, metric).mean)
            ties = [
                r.config.latent_dim
                for r in rs
                if r is not best and Estimate.paired(points(r, key), points(best, key)).verdict() == "tie"
            ]
            picks.append((best.config.latent_dim, ties))
        out.append(
            ChoosingK(
                process,
                guide,
                objective,
                [r.config.latent_dim for r in rs],
                [r.metrics.test_neg_elbo for r in rs],
                [r.metrics.test_neg_log_px for r in rs],
                picks[0][0],
                picks[0][1],
                picks[1][0],
                picks[1][1],
            )
        )
    return out


def guides_compared(jobs: list[JobRecord], points: _Points) -> list[GuideRanking]:
    """Per process, K and objective run with several guides: the best by test log p(x), each
    other's paired difference from it (Monte Carlo errors of importance-sampled log p(x) in
    quadrature)."""
    groups: dict[tuple, list[JobRecord]] = {}
    for r in jobs:
        if points.has(r, "log_px"):
            key = (process_id(r.config), r.config.latent_dim, trained_by(r.config))
            groups.setdefault(key, []).append(r)
    out = []
    for (process, k, objective), rs in sorted(groups.items()):
        if len({r.config.guide for r in rs}) < 2:
            continue
        ranked = sorted(rs, key=lambda r: r.metrics.test_neg_log_px.mean)
        best = ranked[0]
        others = []
        for other in ranked[1:]:
            mc = points.mc_error(best) ** 2 + points.mc_error(other) ** 2
            d = Estimate.paired(points(best, "log_px"), points(other, "log_px"), mc**0.5)
            others.append(Difference(other.config.guide, d, d.verdict(), job=other.job))
        lp = best.metrics.test_neg_log_px
        out.append(
            GuideRanking(
                process, k, objective, best.config.guide, Estimate(-lp.mean, lp.stderr, lp.n), others
            )
        )
    return out


def libi(jobs: list[JobRecord], points: _Points) -> list[LibiComparison]:
    """Each LiBI fit beside the jointly trained fits of the same process and K."""
    out = []
    for r in jobs:
        if _procedure(r.config) != "libi":
            continue
        key = (process_id(r.config), r.config.latent_dim)
        rows = [_libi_row(r, None)]
        for other in jobs:
            if (process_id(other.config), other.config.latent_dim) != key or _procedure(
                other.config
            ) != "joint":
                continue
            delta = None
            if points.has(r, "log_px") and points.has(other, "log_px"):
                # LiBI's MLEO minus the joint fit's: log p_joint(x) - log p_LiBI(x) per point
                delta = points.diff(other, r, "log_px", f"LiBI − {other.job}")
            rows.append(_libi_row(other, delta))
        out.append(LibiComparison(r.job, rows))
    return out


def _libi_row(r: JobRecord, delta) -> LibiRow:
    m = r.metrics
    return LibiRow(r.job, m.mleo, m.pmo_gap, m.aggregate_kl, m.avg_mutual_information, delta)


def m2_counterfactuals(
    jobs: list[JobRecord], points: _Points, key: str
) -> tuple[str | None, list[Difference]]:
    """The M2 fits' counterfactual errors (``key``: z inferred by the model's posterior,
    ``counterfactual_error``, or by the encoder, ``counterfactual_error_guide``) against the MFG
    M2's (its minus theirs, paired)."""
    m2 = [r for r in jobs if r.metrics.semi_supervised is not None and points.has(r, key)]
    mfg = next((r for r in m2 if (r.config.guide, r.config.objective) == ("mean_field", "elbo")), None)
    if mfg is None:
        return None, []
    return mfg.job, [points.diff(mfg, r, key, r.job) for r in m2 if r is not mfg]


def run(folder: RunFolder) -> None:
    jobs, values, _ = folder.results()
    points = _Points(values)
    baseline, m2 = m2_counterfactuals(jobs, points, "counterfactual_error")
    _, m2_guide = m2_counterfactuals(jobs, points, "counterfactual_error_guide")
    findings = Findings(
        orderings=orderings(jobs, points),
        table1=table1(jobs),
        choosing_k=choosing_k(jobs, points),
        guides=guides_compared(jobs, points),
        libi=libi(jobs, points),
        m2_counterfactual=m2,
        m2_counterfactual_guide=m2_guide,
        m2_baseline=baseline,
    )
    folder.write(findings, folder.root / "findings.json")
