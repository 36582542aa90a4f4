"""Stage ``references``: the reference posterior of every ground truth and every learned model.

At the analysis points — the first ``reference_points`` test points of a job's data — the
posterior :math:`p(z \\mid x)` of the ground truth (once per process) and of each finished
job's learned model, by the exact grid (:math:`K \\le 2`) or NUTS
(:func:`pyrofail.analysis.reference_posterior`), stored as ArviZ ``InferenceData`` with the
settings that made it; a reference with the same settings is never recomputed.

Reads: ``config.json``, ``jobs/<job>/{config.json, model.pt}``.
Writes: ``truth/<model>/reference.nc``, ``jobs/<job>/reference.nc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyrofail.analysis.reference import grid, reference_posterior
from pyrofail.analysis.reference import idata as reference_data
from pyrofail.errors import UsageError
from pyrofail.stages.folder import RunFolder, process_id, truth_of
from pyrofail.stages.jobs import job_data, load_job
from pyrofail.stages.pool import run_tasks

__all__ = [
    "DEFAULT_POINTS",
    "DRAWS",
    "analysis_points",
    "has_reference",
    "load_reference",
    "run",
    "settings_of",
]

DRAWS = 500  # reference draws per point: enough for the mode finder and the figures
DEFAULT_POINTS = 300  # a few hundred points keep the stage to seconds per job
# On a user's data, references of learned models with more latent dimensions than this are
# not computed (NUTS over K > 3 on a few hundred points is hours on two cores).
MAX_K_WITHOUT_TRUTH = 3


def settings_of(options: dict) -> dict | None:
    """The reference settings of a run (``None`` with ``--no-reference``)."""
    method = options.get("reference", "auto")
    if method is None:
        return None
    return {
        "method": method,
        "points": int(options.get("reference_points", DEFAULT_POINTS)),
        "draws": DRAWS,
        "seed": int(options["seed"]),
    }


def analysis_points(config: dict, points: int):
    """``(x_ref, x_test)``: the first ``points`` test points of a job's data and all of them,
    as float64."""
    _, splits = job_data(config)
    x = splits.test.x.double()
    return x[: min(points, x.shape[0])], x


def _key(config: dict, settings: dict) -> dict:
    sizes = {k: config[k] for k in ("n_train", "n_val", "n_test", "seed")}
    return {"process": process_id(config), "settings": settings, **sizes}


def load_reference(path: Path, key: dict):
    """The reference stored at ``path`` if it was made with ``key``, else ``None``."""
    if not path.exists():
        return None
    try:
        ref = reference_data.load(path)
    except UsageError:
        return None
    return ref if ref.posterior.attrs.get("key") == json.dumps(key, sort_keys=True) else None


# draws of the trained guide that join the multi-start search for the posterior's maxima
GUIDE_CANDIDATES = 8


def _compute(model, config: dict, settings: dict, path: Path, guide=None) -> str:
    key = _key(config, settings)
    if load_reference(path, key) is None:
        x_ref, _ = analysis_points(config, settings["points"])
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
    return str(path)


def truth_reference(config: dict, settings: dict, path: Path) -> str:
    """The ground truth's reference at the analysis points of ``config``'s data."""
    return _compute(truth_of(config), config, settings, path)


def job_reference(folder: Path, settings: dict) -> str:
    """A finished job's learned model's reference (in float64)."""
    config, _, model, guide = load_job(folder)
    return _compute(model.double(), config, settings, Path(folder) / "reference.nc", guide=guide)


def run(folder: RunFolder) -> None:
    settings = settings_of(folder.options)
    if settings is None:
        return
    groups = folder.by_process()
    tasks = [
        (truth_reference, (group[0]["config"], settings, folder.truth_dir(name) / "reference.nc"))
        for name, group in groups.items()
        if truth_of(group[0]["config"]) is not None and has_reference(group[0]["config"])
    ]
    jobs = [r["config"] for group in groups.values() for r in group if has_reference(r["config"])]
    # the NUTS references of the largest K take longest: start them first
    jobs.sort(key=lambda cfg: -cfg["latent_dim"])
    tasks += [(job_reference, (folder.job_dir(cfg), settings)) for cfg in jobs]
    folder.say(f"references: {len(tasks)} posteriors ({settings['method']}), {folder.workers} at a time")
    run_tasks(_dispatch, tasks, folder.workers)


def has_reference(config: dict) -> bool:
    """Whether the run computes a reference for this job's learned model."""
    if config.get("data") is not None:
        return config["latent_dim"] <= MAX_K_WITHOUT_TRUTH
    truth = truth_of(config)
    if not getattr(truth, "has_density", True):
        return False  # data on a manifold (degenerate_line): no posterior reference to compare with
    return getattr(truth, "num_classes", None) is None  # not for the semi-supervised model


def _dispatch(fn, args):
    return fn(*args)
