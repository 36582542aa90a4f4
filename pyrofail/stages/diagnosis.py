"""Stage ``diagnosis``: which failure of Yacoby et al. (2020) each process shows.

The MFG-VAE is the job with the mean-field guide and the ELBO at the true K. The fit it is
compared with is fixed in advance, not chosen by the statistic it is then tested on: the first
job at the true K in :data:`COMPARATORS` (the IWAE-trained mean-field model, as in the paper;
else the richest family). KL* and the PMO gap come from the analysis points whose references
pass the quality gate; the MLEO and its paired difference from every test point (exact at
K ≤ 2). The conditions and the verdict are decided by :func:`pyrofail.analysis.diagnose.conclude`.

On a user's data there is no ground truth: at each K, the best-fitting model (highest test
log p(x)) stands in for it — its KL* for the truth's, :math:`\\log p_{best}(x) - \\log
p_\\theta(x)` per test point for the MLEO; when that model is the MFG-VAE itself, there is no
trade to detect.

A run that sweeps the truth's noise scale (``--truth-noise``) also gets the failure map: per
process and σ, the MLEO of the MFG-VAE and of its comparator, the share of hard points and the
verdict, and a figure.

Reads: ``truth/<process>/hardness.json``, ``jobs/<job>/{metrics.json, test_points.json,
posterior.json}``. Writes: ``verdicts.json`` (:class:`~pyrofail.records.verdict.Verdicts`),
``figures/failure-map-<process>.png``.
"""

from __future__ import annotations

import torch

from pyrofail.analysis.diagnose import COLLAPSED_NATS, conclude, evidence, training_flags
from pyrofail.analysis.figures.plots import failure_map_figure
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.folder import process_id, truth_of
from pyrofail.records.posterior import PosteriorRecord, TruthHardness
from pyrofail.records.verdict import FailureMapRow, Verdict, Verdicts

__all__ = ["COMPARATORS", "diagnose_process", "diagnose_without_truth", "run"]

# (guide, objective) of the fit the MFG-VAE is compared with, in order of preference
COMPARATORS = (
    ("mean_field", "iwae"),
    ("flow", "iwae"),
    ("flow", "elbo"),
    ("mixture", "iwae"),
    ("mixture", "elbo"),
    ("full_rank", "iwae"),
    ("full_rank", "elbo"),
)


def _joint(job: JobRecord) -> bool:
    return job.config.procedure == "joint"


def _at_k(jobs: list[JobRecord], posterior: dict, k: int) -> dict:
    """Jointly trained jobs at ``k`` with a KL* of their model, by (guide, objective)."""
    return {
        (j.config.guide, j.config.objective): j
        for j in jobs
        if j.config.latent_dim == k and _joint(j) and getattr(posterior.get(j.job), "best_mean_field", None)
    }


def _side(job: JobRecord, record: PosteriorRecord, points, usable: list[bool], mleo) -> dict:
    """The inputs of the evidence for one job: KL*, PMO gap and posterior shift at the usable
    analysis points, the MLEO at every test point."""

    def kept(values):
        return None if values is None else [v for v, ok in zip(values, usable) if ok]

    shift = None if record.truth is None else record.truth.per_point.get("posterior_shift")
    return {
        "job": job.job,
        "kl": kept(record.best_mean_field.per_point),
        "pmo_gap": kept(record.model.per_point["pmo_gap"]),
        "posterior_shift": kept(shift),
        "mleo": mleo,
    }


def _usable(*records) -> list[bool]:
    """Points at which every record's references pass the quality gate."""
    masks = [r.usable for r in records if r is not None]
    return [all(m[i] for m in masks) for i in range(len(masks[0]))]


def _flags(job: JobRecord) -> list:
    return training_flags(job.job, job.restarts, job.history, job.selected_restart)


def diagnose_process(
    name: str, k_true: int, truth_kl: list[float], jobs, posterior: dict, points: dict, learn_noise: bool
) -> Verdict:
    """The verdict for one process from its truth's KL* (per analysis point), its finished jobs,
    their posterior records and test points (``{job: record}``)."""
    at_k = _at_k(jobs, posterior, k_true)
    mfg = at_k.get(("mean_field", "elbo"))
    if mfg is None:
        return Verdict(name, k_true, "truth", "not diagnosed", "no-mfg-job")
    other = next((at_k[c] for c in COMPARATORS if c in at_k), None)
    usable = _usable(posterior[mfg.job], None if other is None else posterior[other.job])
    truth_kl = [v for v, ok in zip(truth_kl, usable) if ok]
    if not truth_kl:
        return Verdict(name, k_true, "truth", "not diagnosed", "no-usable-points")

    def mleo(job):
        p = points[job.job]
        return (torch.tensor(p.truth_log_px) - torch.tensor(p.log_px)).tolist()

    sides = [
        _side(j, posterior[j.job], points[j.job], usable, mleo(j)) for j in (mfg, other) if j is not None
    ]
    ev = evidence(truth_kl, sides[0], sides[1] if other is not None else None)
    flags = _flags(mfg) + ([] if other is None else _flags(other))
    return conclude(
        ev,
        name=name,
        k=k_true,
        learn_noise=learn_noise,
        flags=flags,
        excluded_points=len(usable) - len(truth_kl),
    )


def _collapsed(job) -> bool:
    """The fit's latent is unused: its encoder's mutual information per latent dimension is
    below :data:`~pyrofail.analysis.diagnose.COLLAPSED_NATS` (by more than two standard errors
    or exactly zero)."""
    mi = job.metrics.avg_mutual_information
    if mi is None:
        return False
    return mi.mean + 2 * (mi.stderr or 0.0) < COLLAPSED_NATS


def diagnose_without_truth(
    name: str, k: int, jobs, posterior: dict, points: dict, learn_noise: bool
) -> Verdict:
    """The verdict at latent dimension ``k`` on a user's data: the best-fitting model at ``k``
    (highest test log p(x)) stands in for the ground truth (module docstring)."""
    at_k = _at_k(jobs, posterior, k)
    if not at_k:
        return Verdict(name, k, "", "not diagnosed", "no-references")
    best = min(at_k.values(), key=lambda j: (j.metrics.test_neg_log_px.mean, j.job))
    mfg = at_k.get(("mean_field", "elbo"))
    if mfg is None:
        return Verdict(name, k, best.job, "not diagnosed", "no-mfg-job")
    other = next((at_k[c] for c in COMPARATORS if c in at_k), None)
    usable = _usable(posterior[mfg.job], posterior[best.job], None if other is None else posterior[other.job])
    truth_kl = [v for v, ok in zip(posterior[best.job].best_mean_field.per_point, usable) if ok]
    if not truth_kl:
        return Verdict(name, k, best.job, "not diagnosed", "no-usable-points")
    best_lp = torch.tensor(points[best.job].log_px)

    def mleo(job):
        return (best_lp - torch.tensor(points[job.job].log_px)).tolist()

    sides = [
        _side(j, posterior[j.job], points[j.job], usable, mleo(j)) for j in (mfg, other) if j is not None
    ]
    ev = evidence(truth_kl, sides[0], sides[1] if other is not None else None)
    flags = _flags(mfg) + ([] if other is None else _flags(other))
    return conclude(
        ev,
        name=name,
        k=k,
        reference=best.job,
        mfg_is_best=best.job == mfg.job,
        collapsed=_collapsed(best),
        learn_noise=learn_noise,
        flags=flags,
        excluded_points=len(usable) - len(truth_kl),
    )


def run(folder: RunFolder) -> None:
    if folder.reference_settings is None:
        return
    verdicts = {}
    learn_noise = folder.options.learn_noise is True  # "above_true_k": not at the true K
    jobs, all_points, all_posterior = folder.results()  # cross-fitted folds pooled
    groups: dict[str, list[JobRecord]] = {}
    for r in jobs:
        groups.setdefault(process_id(r.config), []).append(r)
    for name, group in groups.items():
        posterior = {r.job: all_posterior[r.job] for r in group if r.job in all_posterior}
        if not posterior:
            continue  # no references (the semi-supervised model): nothing to diagnose here
        points = {r.job: all_points[r.job] for r in group if r.job in all_points}
        truth = truth_of(group[0].config)
        if truth is None:
            for k in sorted({r.config.latent_dim for r in group}):
                verdicts[f"{name} K={k}"] = diagnose_without_truth(
                    name, k, group, posterior, points, learn_noise
                )
            continue
        hardness = folder.read(TruthHardness, folder.truth_dir(name) / "hardness.json")
        kl = hardness.best_mean_field.per_point
        verdicts[name] = diagnose_process(name, truth.latent_dim, kl, group, posterior, points, learn_noise)
    maps = failure_maps(folder, verdicts)
    folder.write(Verdicts(verdicts, maps), folder.root / "verdicts.json")
    for process, rows in maps.items():
        failure_map_figure(folder.figures / f"failure-map-{process}.png", process, rows)


def failure_maps(folder: RunFolder, verdicts: dict) -> dict[str, list[FailureMapRow]]:
    """``{process: rows}`` for every process run at more than one noise scale of its truth."""
    by_process: dict[str, list[FailureMapRow]] = {}
    for name, group in folder.by_process().items():
        verdict = verdicts.get(name)
        if verdict is None or verdict.evidence is None:
            continue
        ev = verdict.evidence
        sigma = float(truth_of(group[0].config).noise_scale.reshape(-1)[0])
        row = FailureMapRow(
            process=name,
            sigma=sigma,
            failure=verdict.failure,
            mleo_mfg=ev.mean_field.mleo,
            mleo_other=None if ev.richer is None else ev.richer.mleo,
            other=None if ev.richer is None else ev.richer.job.removeprefix(f"{name}-"),
            px_cost=ev.px_cost,
            share_hard=ev.truth_share_hard,
            cx1_share=ev.cx1_share,
            pmo_gap=ev.mean_field.pmo_gap,
        )
        by_process.setdefault(group[0].config.process, []).append(row)
    return {m: sorted(rows, key=lambda r: r.sigma) for m, rows in by_process.items() if len(rows) > 1}
