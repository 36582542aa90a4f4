"""Stage ``jobs``: fit every job and measure it on its test data.

A job is one process x K x guide x objective, a pure function of its resolved config: it
writes only inside its own folder ``jobs/<job>/`` — ``config.json``, ``fit.ckpt`` while
training (deleted when done), ``model.pt`` and ``guide.pt`` (state dicts of the selected
restart), ``test_points.json`` (every test point's −ELBO, log p(x), mutual-information
contributions and test bound, for paired comparisons), ``figures/`` and, written last,
``metrics.json``: a folder with ``metrics.json`` is finished and never recomputed. A job
whose every restart diverges writes ``failed.json`` instead, and the others go on.

Reads: ``config.json``. Writes: ``jobs/<job>/*``.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch

from pyrofail.analysis import metrics, semisupervised
from pyrofail.analysis.figures import plots
from pyrofail.data import load_splits, make_splits
from pyrofail.errors import AllRestartsDiverged, UsageError
from pyrofail.fit import fit
from pyrofail.labels import hide_labels
from pyrofail.runs import RUN_FORMAT, atomic_torch_save, atomic_write_json, read_json
from pyrofail.stages.folder import RunFolder, job_id, truth_of
from pyrofail.stages.pool import run_tasks
from pyrofail.training import build

__all__ = ["ABOVE_TRUE_K", "AXES", "expand", "job_data", "load_job", "run", "run_job"]

AXES = ("model", "truth_noise", "latent_dim", "guide", "objective", "procedure")
# ``learn_noise`` may name the jobs that learn sigma: those with more latent dimensions than
# the ground truth. The jobs at the true K keep the truth's sigma: they are Table 1's "GT"
# model, which the paper's ELBO is said to prefer less than larger K *and smaller sigma*.
ABOVE_TRUE_K = "above_true_k"
# Options of the later stages: they do not change a fit and stay out of a job's config.
LATER_STAGE_OPTIONS = ("reference", "reference_points")


def expand(options: dict) -> list[dict]:
    """The cartesian product over the list-valued axes (model, truth noise, latent_dim, guide,
    objective); per-guide, per-objective and per-model (``truth_options``) option tables are
    resolved for each job. A truth noise of ``None`` keeps each process's own; ``learn_noise``
    of :data:`ABOVE_TRUE_K` becomes ``True`` for jobs above the truth's latent dimension and
    ``False`` for the others."""
    options = {"truth_noise": None, "procedure": ["joint"], **options}
    if options.get("data") is not None:  # a user's data set takes the place of the processes
        options["model"] = [None]
    axes = [options[a] if isinstance(options[a], (list, tuple)) else [options[a]] for a in AXES]
    jobs = []
    for model, noise, k, guide, objective, procedure in itertools.product(*axes):
        cfg = {k: v for k, v in options.items() if k not in AXES and k not in LATER_STAGE_OPTIONS}
        cfg.update(model=model, latent_dim=int(k), guide=guide, objective=objective)
        if procedure != "joint":
            cfg["procedure"] = procedure
            cfg["procedure_options"] = dict(options.get("procedure_options", {}).get(procedure, {}))
        truth_options = dict(options.get("truth_options", {}).get(model, {}))
        cfg.pop("truth_options", None)
        if noise is not None:
            truth_options["noise_scale"] = float(noise)
        if truth_options:
            cfg["truth_options"] = truth_options
        cfg["guide_options"] = dict(options.get("guide_options", {}).get(guide, {}))
        cfg["objective_options"] = dict(options.get("objective_options", {}).get(objective, {}))
        cfg["lr"] = float(options.get("lr_by_guide", {}).get(guide, options["lr"]))
        cfg.pop("lr_by_guide", None)
        if cfg.get("learn_noise") == ABOVE_TRUE_K:
            cfg["learn_noise"] = int(k) > truth_of({**cfg, "truth_options": truth_options}).latent_dim
        cfg["format"] = RUN_FORMAT
        jobs.append(cfg)
    return jobs


def job_data(config: dict):
    """``(truth, splits)``: the job's ground truth (``None`` for a user's data) and its seeded
    train/validation/test data."""
    if config.get("data") is not None:
        return None, load_splits(config["data"], **config.get("data_options", {}), seed=config["seed"])
    truth = truth_of(config)
    splits = make_splits(truth, config["n_train"], config["n_val"], config["n_test"], seed=config["seed"])
    return truth, splits


def run_job(config: dict, folder: str | os.PathLike, progress: bool = False) -> dict:
    """Fit and measure one job; returns its record (also written to ``metrics.json``), or
    ``{"job", "config", "failed"}`` when every restart diverged."""
    folder = Path(folder)
    done, failed = folder / "metrics.json", folder / "failed.json"
    if failed.exists() and not done.exists():
        record = read_json(failed)
        if record.get("config") == config:
            return record  # every restart diverged: the same options diverge again
    if done.exists():
        result = read_json(done)
        if result.get("config") == config:
            return result
        raise UsageError(f"{folder} holds a finished job with other options; use a new --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", config)
    truth, splits = job_data(config)
    try:
        result = _fit(config, splits, truth, folder, progress)
    except AllRestartsDiverged as e:
        record = {"job": job_id(config), "config": config, "failed": str(e)}
        atomic_write_json(failed, record)
        return record
    model, guide = result.model.cpu(), result.guide.cpu()
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    atomic_torch_save(guide.state_dict(), folder / "guide.pt")
    x_test = splits.test.x
    seed = config["seed"]
    if labelled(truth):
        summary, values = _semi_supervised_metrics(model, guide, splits.test, truth, seed)
    else:
        # a user's data: no grid (D may be large), importance sampling to a stated precision
        log_px = {"method": "is", "target_stderr": 0.01} if truth is None else {}
        summary, values = metrics.summarize(
            model,
            guide,
            x_test,
            truth=truth,
            is_samples=config.get("is_samples", 5000),
            seed=seed,
            per_point=True,
            **log_px,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bound = result.objective.per_point(model, guide, x_test)
        trained = bound if labelled(truth) else result.objective.training_bound(model, guide, x_test)
    for key, estimate in (("test_neg_bound", bound), ("test_neg_training_bound", trained)):
        mean, stderr = estimate.mean()
        summary[key], summary[f"{key}_stderr"] = -float(mean), float(stderr)
    if hasattr(result.objective, "trained_on"):
        summary["trained_on"] = result.objective.trained_on(guide)
    if hasattr(model, "noise_scale"):
        summary["noise_scale"] = model.noise_scale.tolist()
    values["neg_bound"] = -bound.value
    atomic_write_json(folder / "test_points.json", values)
    if labelled(truth):
        figures = plots.class_curves_figure(
            truth, model, splits.test, folder / "figures", title=job_id(config)
        )
    else:
        figures = plots.job_figures(
            truth, model, splits.test, folder / "figures", title=job_id(config), seed=config["seed"]
        )
    out = {
        "job": job_id(config),
        "config": config,
        "metrics": summary,
        "restarts": result.restarts,
        "selected_restart": result.best,
        "history": result.history,
        "figures": [str(Path(f).relative_to(folder)) for f in figures],
    }
    atomic_write_json(done, out)
    (folder / "fit.ckpt").unlink(missing_ok=True)
    (folder / "fit.likelihood.pt").unlink(missing_ok=True)
    return out


def labelled(truth) -> bool:
    """Whether a ground truth has labels (a semi-supervised process such as ``semicircle``)."""
    return getattr(truth, "num_classes", None) is not None


def _labels(config: dict, splits) -> dict:
    """The labels a semi-supervised job trains on: ``labelled_fraction`` of the training and
    the validation points keep theirs (seeded), the others are unlabelled (``-1``)."""
    fraction = float(config.get("labelled_fraction", 0.1))
    return {
        "y": hide_labels(splits.train.y, fraction, seed=config["seed"]),
        "y_val": hide_labels(splits.val.y, fraction, seed=config["seed"] + 1),
    }


def _semi_supervised_metrics(model, guide, test, truth, seed: int):
    """The M2 metrics (:func:`pyrofail.analysis.semisupervised.summarize`) and every test
    point's counterfactual error, for paired comparisons."""
    summary = semisupervised.summarize(model, guide, test.x, test.y, truth, seed=seed)
    cf = semisupervised.counterfactual_error(model, guide, test.x, test.y, truth, seed=seed)
    return summary, {"counterfactual_error": cf["per_point"]}


def _fit(config, splits, truth, folder, progress):
    return fit(
        splits.train.x,
        **(_labels(config, splits) if labelled(truth) else {}),
        x_val=splits.val.x,
        truth=truth,
        latent_dim=config["latent_dim"],
        guide=config["guide"],
        objective=config["objective"],
        restarts=config["restarts"],
        steps=config["steps"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        seed=config["seed"],
        device=config.get("device", "cpu"),
        hidden=config["hidden"],
        init=config["init"],
        pretrain_steps=config.get("pretrain_steps", 2000),
        learn_noise=config["learn_noise"],
        noise_scale=config.get("noise_scale"),
        likelihood=config.get("likelihood", "gaussian"),
        noise_per_feature=bool(config.get("noise_per_feature", False)),
        guide_options=config["guide_options"],
        objective_options=config["objective_options"],
        procedure=config.get("procedure", "joint"),
        procedure_options=config.get("procedure_options", {}),
        checkpoint=folder / "fit.ckpt",
        progress=progress,
    )


def load_job(folder: str | os.PathLike):
    """``(config, truth, model, guide)`` of a finished job, rebuilt from its ``config.json``
    by :mod:`pyrofail.training.build` (as the fit built them) with the saved state dicts,
    loaded with ``weights_only=True``."""
    folder = Path(folder)
    config = read_json(folder / "config.json")
    truth, splits = job_data(config)
    k, d = int(config["latent_dim"]), splits.test.x.shape[1]
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave no trace
        noise = config.get("noise_scale") or (float(truth.noise_scale) if truth is not None else 1.0)
        options = {"hidden": tuple(config["hidden"]), "activation": config.get("activation", "leaky_relu")}
        classes = getattr(truth, "num_classes", None)
        model = build.learned_model(
            k,
            d,
            noise,
            learn_noise=bool(config["learn_noise"]),
            likelihood=config.get("likelihood", "gaussian"),
            noise_per_feature=bool(config.get("noise_per_feature", False)),
            num_classes=classes,
            **options,
        )
        guide = build.guide(
            config["guide"], k, d, options=config.get("guide_options", {}), num_classes=classes, **options
        )
    for module, name in ((model, "model.pt"), (guide, "guide.pt")):
        try:
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"{folder / name} does not exist; the job has not finished") from None
        except Exception as e:  # noqa: BLE001 - any unpickling failure: not our checkpoint
            raise UsageError(f"{folder / name} is not a state dict ({type(e).__name__})") from None
        module.load_state_dict(state)
    return config, truth, model.eval(), guide.eval()


def run(folder: RunFolder) -> None:
    """Run every job of the run that has not finished, ``folder.workers`` at a time."""
    tasks = [(cfg, folder.job_dir(cfg), not folder.quiet and folder.workers <= 1) for cfg in folder.jobs]
    bar = None
    if not folder.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="jobs", unit="job", dynamic_ncols=True)

    def tick(i, total):
        if bar is not None:
            bar.update(1)

    run_tasks(run_job, tasks, folder.workers, progress=tick)
    if bar is not None:
        bar.close()
