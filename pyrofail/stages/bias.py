"""Stage ``bias``: each guide and learned model against the reference posteriors.

Per process, the ground truth's KL* at the analysis points (how hard its posteriors are for a
mean-field Gaussian); per job, :func:`pyrofail.analysis.compare` of its guide against its own
model's reference and the truth's, the KL* of its learned model (at the true K, K ≤ 2), and the
PMO gap at every test point (for the map over data space); per process, the figures.

Reads: ``jobs/<job>/{config.json, model.pt, guide.pt, reference.nc, test_points.json}``,
``truth/<model>/reference.nc``.
Writes: ``truth/<model>/hardness.json``, ``jobs/<job>/posterior.json`` (written last: its
presence means done), ``figures/posterior-<model>.png``, ``figures/pmo-gap-<model>.png``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.analysis.compare import compare
from pyrofail.analysis.figures import posterior as pp
from pyrofail.analysis.hardness import best_mean_field
from pyrofail.analysis.reference import idata as reference_data
from pyrofail.analysis.reference import quality
from pyrofail.analysis.reference.modes import reference_modes
from pyrofail.runs import atomic_write_json, read_json
from pyrofail.stages.folder import RunFolder, job_id, process_id, truth_of
from pyrofail.stages.jobs import load_job
from pyrofail.stages.pool import run_tasks
from pyrofail.stages.references import DRAWS, analysis_points, has_reference, settings_of

__all__ = ["run", "job_bias", "truth_hardness"]


def _lists(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


# The stage keeps 500 draws per point (a quarter of a reference's default): it asks for a
# quarter of the gate's usual effective sample size, 100, i.e. 25 per chain.
GATE = {"ess_min": quality.ESS_MIN * DRAWS / 2000}


def _quality(ref) -> dict:
    """The reference's quality gate as a record: per point ``ok``, the share failing each check."""
    q = quality.gate(ref, **GATE)
    return {"method": q.method, "ok": q.ok.tolist(), "summary": q.summary(), "limits": q.limits}


def _current(path: Path, key: dict) -> dict | None:
    if path.exists():
        record = read_json(path)
        if record.get("key") == key:
            return record
    return None


def truth_hardness(config: dict, settings: dict, folder: Path) -> dict:
    """KL* of the ground truth's posterior at every analysis point (``hardness.json``)."""
    sizes = {k: config[k] for k in ("n_train", "n_val", "n_test", "seed")}
    key = {"process": process_id(config), "settings": settings, **sizes}
    done = folder / "hardness.json"
    record = _current(done, key)
    if record is not None:
        return record
    ref = reference_data.load(folder / "reference.nc")
    x_ref, _ = analysis_points(config, settings["points"])
    modes = reference_modes(ref, seed=settings["seed"])
    best = best_mean_field(truth_of(config), x_ref, ref, modes=modes, seed=settings["seed"])
    record = {
        "key": key,
        "method": reference_data.method(ref),
        "quality": _quality(ref),
        "best_mean_field": {
            "mean": best["mean"],
            "share_hard": best["share_hard"],
            "hard_kl": best["hard_kl"],
            "per_point": best["kl"].tolist(),
        },
    }
    atomic_write_json(done, record)
    return record


def job_bias(folder: Path, truth_folder: Path, settings: dict) -> dict:
    """One job's guide and model against the references (``posterior.json``)."""
    folder = Path(folder)
    key = {"settings": settings, "job": job_id(read_json(folder / "config.json"))}
    done = folder / "posterior.json"
    record = _current(done, key)
    if record is not None:
        return record
    config, truth, model, guide = load_job(folder)
    model, guide = model.double(), guide.double()
    x_ref, _ = analysis_points(config, settings["points"])
    seed = settings["seed"]
    ref = reference_data.load(folder / "reference.nc")
    modes = reference_modes(ref, seed=seed)
    against = {}
    if truth is not None:
        truth_ref = reference_data.load(truth_folder / "reference.nc")
        against = {"truth_reference": truth_ref, "truth_modes": reference_modes(truth_ref, seed=seed)}
    result = compare(model, guide, x_ref, ref, truth, modes=modes, seed=seed, gate_options=GATE, **against)
    best = None
    # KL* of the learned model: against the truth's at the true K (K <= 2, where it is
    # computed on a grid); on a user's data, of every model, the best one standing in for a truth
    if (truth is None and model.latent_dim <= 3) or (
        truth is not None and model.latent_dim == truth.latent_dim and model.latent_dim <= 2
    ):
        best = best_mean_field(model, x_ref, ref, modes=modes, seed=seed)
    # the PMO gap at every test point, for the map over data space, from the job's own values
    points = read_json(folder / "test_points.json")
    pmo_all = torch.tensor(points["log_px"], dtype=torch.float64) + torch.tensor(points["neg_elbo"])
    record = {
        "key": key,
        "job": job_id(config),
        "reference_method": result["reference_method"],
        "n_points": result["n_points"],
        "usable": result["usable"].tolist(),
        "excluded": result["excluded"],
        "reasons": result["reasons"],
        "quality": _quality(ref),
        "model": {"mean": result["model"]["mean"], "per_point": _lists(result["model"]["per_point"])},
        "truth": None
        if result["truth"] is None
        else {"mean": result["truth"]["mean"], "per_point": _lists(result["truth"]["per_point"])},
        "mleo": None
        if result["mleo"] is None
        else {
            "mean": result["mleo"]["mean"],
            "stderr": result["mleo"]["stderr"],
            "per_point": result["mleo"]["per_point"].tolist(),
        },
        "best_mean_field": None
        if best is None
        else {
            "mean": best["mean"],
            "share_hard": best["share_hard"],
            "per_point": best["kl"].tolist(),
            "loc": best["loc"].tolist(),
            "scale": best["scale"].tolist(),
        },
        "pmo_gap_all_test_points": pmo_all.tolist(),
    }
    atomic_write_json(done, record)
    return record


def _figures(folder: RunFolder, name: str, group: list[dict], settings: dict) -> None:
    """The posteriors at points spread over the truth's KL*, and the PMO-gap map."""
    hardness = read_json(folder.truth_dir(name) / "hardness.json")
    truth_ref = reference_data.load(folder.truth_dir(name) / "reference.nc")
    truth = truth_of(group[0]["config"])
    picks = pp.choose_points(hardness["best_mean_field"]["per_point"])
    fits, gaps = [], {}
    for r in group:
        job_folder = folder.job_dir(r["job"])
        gaps[r["job"]] = read_json(job_folder / "posterior.json")["pmo_gap_all_test_points"]
        if r["config"]["latent_dim"] == truth.latent_dim:
            _, _, model, guide = load_job(job_folder)
            fits.append((r["job"], model, guide, reference_data.load(job_folder / "reference.nc")))
    if fits:
        pp.posterior_figure(
            folder.figures / f"posterior-{name}.png", truth, truth_ref, picks, fits, title=name
        )
    x_ref, x_test = analysis_points(group[0]["config"], settings["points"])
    pp.pmo_gap_figure(
        folder.figures / f"pmo-gap-{name}.png",
        x_test,
        gaps,
        marked=x_ref[torch.as_tensor(picks)],
        truth=truth,
        title=name,
    )


def run(folder: RunFolder) -> None:
    settings = settings_of(folder.options)
    if settings is None:
        return
    groups = folder.by_process()
    groups = {name: group for name, group in groups.items() if has_reference(group[0]["config"])}
    for name, group in groups.items():
        if truth_of(group[0]["config"]) is not None:
            truth_hardness(group[0]["config"], settings, folder.truth_dir(name))
    tasks = [
        (folder.job_dir(r["job"]), folder.truth_dir(name), settings)
        for name, group in groups.items()
        for r in group
        if has_reference(r["config"])
    ]
    folder.say(f"posterior bias: {len(tasks)} jobs")
    run_tasks(job_bias, tasks, folder.workers)
    for name, group in groups.items():
        if truth_of(group[0]["config"]) is not None:
            _figures(folder, name, group, settings)
