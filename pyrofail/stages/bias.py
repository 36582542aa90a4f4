"""Stage ``bias``: each guide and learned model against the reference posteriors.

Per process, the ground truth's KL* at the analysis points (how hard its posteriors are for a
mean-field Gaussian); per job, :func:`pyrofail.analysis.compare` of its guide against its own
model's reference and the truth's, the KL* of its learned model (at the true K, K ≤ 2; on a
user's data at every K ≤ 3), and the PMO gap at every test point (for the map over data
space); per process, the figures. Both kinds of task run side by side.

Reads: ``jobs/<job>/{metrics.json, model.pt, guide.pt, test.pt, test_points.json,
reference.nc}``, ``truth/<process>/reference.nc``.
Writes: ``truth/<process>/hardness.json`` (:class:`~pyrofail.records.TruthHardness`),
``jobs/<job>/posterior.json`` (:class:`~pyrofail.records.PosteriorRecord`),
``figures/posterior-<process>.png``, ``figures/pmo-gap-<process>.png``.
"""

from __future__ import annotations

import torch

from pyrofail.analysis.compare import GUIDE_SAMPLES, compare, pareto_k_threshold
from pyrofail.analysis.figures import posterior as pp
from pyrofail.analysis.hardness import best_mean_field
from pyrofail.analysis.reference import idata as reference_data
from pyrofail.analysis.reference import quality
from pyrofail.analysis.reference.modes import reference_modes
from pyrofail.estimate import Estimate
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.folder import DRAWS, has_reference, process_id, truth_of
from pyrofail.records.posterior import Bias, Hardness, PosteriorRecord, Quality, TruthHardness
from pyrofail.stages.pool import run_tasks

__all__ = ["job_bias", "run", "truth_hardness"]

# the ESS limit of the gate, scaled to the stage's draws per point
GATE = {"ess_min": quality.ESS_MIN * DRAWS / 2000}


def _quality(ref) -> Quality:
    q = quality.gate(ref, **GATE)
    return Quality(method=q.method, ok=q.ok.tolist(), summary=q.summary(), limits=q.limits)


def truth_hardness(folder: RunFolder, record: JobRecord) -> str:
    """KL* of the ground truth's posterior at the analysis points of ``record``'s process."""
    config, settings = record.config, folder.reference_settings
    name = process_id(config)
    key = {"process": name, "settings": settings, **config.sample_key()}

    def compute() -> TruthHardness:
        ref = reference_data.load(folder.truth_dir(name) / "reference.nc")
        x_ref, _ = folder.analysis_points(record.job)
        modes = reference_modes(ref, seed=settings["seed"])
        best = best_mean_field(truth_of(config), x_ref, ref, modes=modes, seed=settings["seed"])
        return TruthHardness(key, reference_data.method(ref), _quality(ref), Hardness.of(best))

    folder.cached(folder.truth_dir(name) / "hardness.json", TruthHardness, key, compute)
    return name


def _bias(per_point: dict, usable: torch.Tensor, num_samples: int) -> Bias:
    """Per-point values and their means ± standard errors over the usable points."""
    values = {k: v.double() for k, v in per_point.items()}
    mean = {k: Estimate.of(v[usable]) for k, v in values.items() if k != "pareto_k"}
    k_hat = values["pareto_k"][usable]
    threshold = pareto_k_threshold(num_samples)
    mean["pareto_k_bad_share"] = Estimate.of((k_hat > threshold).double())
    return Bias(
        mean=mean,
        per_point={k: v.tolist() for k, v in values.items()},
        pareto_k_median=float(k_hat.median()) if k_hat.numel() else None,
        pareto_k_threshold=threshold,
    )


def job_bias(folder: RunFolder, record: JobRecord) -> str:
    """One job's guide and model against the references (``posterior.json``)."""
    settings = folder.reference_settings
    key = {"settings": settings, "job": record.job}
    job_dir = folder.job_dir(record.job)

    def compute() -> PosteriorRecord:
        truth = truth_of(record.config)
        model, guide = folder.fitted(record)
        model, guide = model.double(), guide.double()
        x_ref, _ = folder.analysis_points(record.job)
        seed = settings["seed"]
        ref = reference_data.load(job_dir / "reference.nc")
        modes = reference_modes(ref, seed=seed)
        against = {}
        if truth is not None:
            truth_ref = reference_data.load(folder.truth_dir(process_id(record.config)) / "reference.nc")
            against = {"truth_reference": truth_ref, "truth_modes": reference_modes(truth_ref, seed=seed)}
        result = compare(
            model, guide, x_ref, ref, truth, modes=modes, seed=seed, gate_options=GATE, **against
        )
        best = None
        # KL* of the learned model: against the truth's at the true K (K <= 2, where it is
        # computed on a grid); on a user's data, of every model, the best one standing in for a truth
        k = model.latent_dim
        if (truth is None and k <= 3) or (truth is not None and k == truth.latent_dim and k <= 2):
            best = Hardness.of(best_mean_field(model, x_ref, ref, modes=modes, seed=seed), keep_fit=True)
        # the PMO gap at every test point, for the map over data space, from the job's own values
        points = folder.test_points(record.job)
        pmo_all = torch.tensor(points.log_px, dtype=torch.float64) + torch.tensor(points.neg_elbo)
        usable = result["usable"]
        return PosteriorRecord(
            key=key,
            job=record.job,
            reference_method=result["reference_method"],
            n_points=result["n_points"],
            usable=usable.tolist(),
            excluded=result["excluded"],
            reasons=result["reasons"],
            quality=_quality(ref),
            model=_bias(result["model"]["per_point"], usable, GUIDE_SAMPLES),
            truth=None
            if result["truth"] is None
            else _bias(result["truth"]["per_point"], usable, GUIDE_SAMPLES),
            best_mean_field=best,
            pmo_gap_all_test_points=pmo_all.tolist(),
        )

    folder.cached(job_dir / "posterior.json", PosteriorRecord, key, compute)
    return record.job


def _figures(folder: RunFolder, name: str, group: list[JobRecord]) -> None:
    """The posteriors at points spread over the truth's KL*, and the PMO-gap map."""
    hardness = folder.read(TruthHardness, folder.truth_dir(name) / "hardness.json")
    truth_ref = reference_data.load(folder.truth_dir(name) / "reference.nc")
    truth = truth_of(group[0].config)
    picks = pp.choose_points(hardness.best_mean_field.per_point)
    fits, gaps = [], {}
    for r in group:
        job_dir = folder.job_dir(r.job)
        gaps[r.job] = folder.read(PosteriorRecord, job_dir / "posterior.json").pmo_gap_all_test_points
        if r.config.latent_dim == truth.latent_dim:
            model, guide = folder.fitted(r)
            fits.append((r.job, model, guide, reference_data.load(job_dir / "reference.nc")))
    if fits:
        pp.posterior_figure(
            folder.figures / f"posterior-{name}.png", truth, truth_ref, picks, fits, title=name
        )
    x_ref, x_test = folder.analysis_points(group[0].job)
    pp.pmo_gap_figure(
        folder.figures / f"pmo-gap-{name}.png",
        x_test,
        gaps,
        marked=x_ref[torch.as_tensor(picks)],
        truth=truth,
        title=name,
    )


def run(folder: RunFolder) -> None:
    if folder.reference_settings is None:
        return
    groups = {n: g for n, g in folder.by_process().items() if has_reference(g[0].config)}
    tasks = [(truth_hardness, (folder, g[0])) for g in groups.values() if truth_of(g[0].config) is not None]
    tasks += [(job_bias, (folder, r)) for g in groups.values() for r in g if has_reference(r.config)]
    run_tasks(
        _dispatch, tasks, folder.workers, threads=folder.threads, label="posterior bias", quiet=folder.quiet
    )
    for name, group in groups.items():
        if truth_of(group[0].config) is not None:
            _figures(folder, name, group)


def _dispatch(fn, args):
    return fn(*args)
