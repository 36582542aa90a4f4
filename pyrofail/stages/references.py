"""Stage ``references``: the reference posterior of every ground truth and every learned model.

At the analysis points — the first ``reference_points`` test points of a job's data — the
posterior :math:`p(z \\mid x)` of the ground truth (once per process) and of each finished
job's learned model, by the exact grid (:math:`K \\le 2`) or NUTS
(:func:`pyrofail.analysis.reference_posterior`), stored as ArviZ ``InferenceData`` with the
settings that made it (its ``key``); a reference with the same key is never recomputed.

Reads: ``jobs/<job>/{metrics.json, model.pt, guide.pt, test.pt}``.
Writes: ``truth/<process>/reference.nc``, ``jobs/<job>/reference.nc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyrofail.analysis.reference import grid, reference_posterior
from pyrofail.analysis.reference import idata as reference_data
from pyrofail.errors import UsageError
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.folder import has_reference, process_id, truth_of
from pyrofail.stages.pool import run_tasks

__all__ = ["GUIDE_CANDIDATES", "load_reference", "run"]

# draws of the trained guide that join the multi-start search for the posterior's maxima
GUIDE_CANDIDATES = 8


def _key(config, settings: dict) -> dict:
    return {"process": process_id(config), "settings": settings, **config.sample_key()}


def load_reference(path: Path, key: dict):
    """The reference stored at ``path`` if it was made with ``key``, else ``None``."""
    if not path.exists():
        return None
    try:
        ref = reference_data.load(path)
    except UsageError:
        return None
    return ref if ref.posterior.attrs.get("key") == json.dumps(key, sort_keys=True) else None


def _compute(model, x_ref, key: dict, settings: dict, path: Path, guide=None) -> None:
    if load_reference(path, key) is None:
        options = {}
        nuts = settings["method"] == "nuts" or (
            settings["method"] == "auto" and model.latent_dim > grid.MAX_K
        )
        if nuts and guide is not None:
            # a trained guide knows where the posterior's mass is: its draws start searches too
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(settings["seed"])
                options["extra_candidates"] = guide.double().distribution(x_ref).sample((GUIDE_CANDIDATES,))
        ref = reference_posterior(
            model, x_ref, settings["method"], num_draws=settings["draws"], seed=settings["seed"], **options
        )
        ref.posterior.attrs["key"] = json.dumps(key, sort_keys=True)
        reference_data.save(ref, path)


def truth_reference(folder: RunFolder, record: JobRecord) -> str:
    """The ground truth's reference at the analysis points of ``record``'s process; returns
    its name."""
    settings = folder.reference_settings
    x_ref, _ = folder.analysis_points(record.job)
    path = folder.truth_dir(process_id(record.config)) / "reference.nc"
    _compute(truth_of(record.config), x_ref, _key(record.config, settings), settings, path)
    return f"truth/{process_id(record.config)}"


def job_reference(folder: RunFolder, record: JobRecord) -> str:
    """A finished job's learned model's reference (in float64); returns the job's name."""
    settings = folder.reference_settings
    model, guide = folder.fitted(record)
    x_ref, _ = folder.analysis_points(record.job)
    path = folder.job_dir(record.job) / "reference.nc"
    _compute(model.double(), x_ref, _key(record.config, settings), settings, path, guide=guide)
    return record.job


def run(folder: RunFolder) -> None:
    if folder.reference_settings is None:
        return
    groups = folder.by_process()
    tasks = [
        (truth_reference, (folder, group[0]))
        for group in groups.values()
        if truth_of(group[0].config) is not None and has_reference(group[0].config)
    ]
    jobs = [r for group in groups.values() for r in group if has_reference(r.config)]
    jobs.sort(key=lambda r: -r.config.latent_dim)  # the NUTS references of the largest K first
    tasks += [(job_reference, (folder, r)) for r in jobs]
    label = f"references ({folder.reference_settings['method']})"
    run_tasks(_dispatch, tasks, folder.workers, threads=folder.threads, label=label, quiet=folder.quiet)


def _dispatch(fn, args):
    return fn(*args)
