"""Jobs: one process x K x guide x objective each, a pure function of its resolved config.

A job writes only inside its own folder and returns its summary; nothing is shared between
jobs, so they run in this process, in a local process pool (``workers > 1``), or anywhere
else that can call :func:`run_job`. A job folder holds ``config.json``, ``fit.ckpt`` while
training (deleted when done), ``model.pt`` and ``guide.pt`` (state dicts of the selected
restart), ``figures/`` and, written last, ``metrics.json``: a folder with ``metrics.json``
is finished and is never recomputed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from pyrofail import zoo
from pyrofail.data import make_splits
from pyrofail.errors import AllRestartsDiverged, UsageError
from pyrofail.fit import fit
from pyrofail.runs import RUN_FORMAT, atomic_torch_save, atomic_write_json, read_json

AXES = ("model", "latent_dim", "guide", "objective")


def job_id(config: dict) -> str:
    return f"{config['model']}-K{config['latent_dim']}-{config['guide']}-{config['objective']}"


def expand(options: dict) -> list[dict]:
    """The cartesian product over the list-valued axes (model, latent_dim, guide, objective);
    per-guide and per-objective option tables are resolved for each job."""
    axes = [options[a] if isinstance(options[a], (list, tuple)) else [options[a]] for a in AXES]
    jobs = []
    for model, k, guide, objective in itertools.product(*axes):
        cfg = {key: value for key, value in options.items() if key not in AXES}
        cfg.update(model=model, latent_dim=int(k), guide=guide, objective=objective)
        cfg["guide_options"] = dict(options.get("guide_options", {}).get(guide, {}))
        cfg["objective_options"] = dict(options.get("objective_options", {}).get(objective, {}))
        cfg["lr"] = float(options.get("lr_by_guide", {}).get(guide, options["lr"]))
        cfg.pop("lr_by_guide", None)
        cfg["format"] = RUN_FORMAT
        jobs.append(cfg)
    return jobs


def _clean_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("progress", "threads")}


def run_job(config: dict, folder: str | os.PathLike, progress: bool = False) -> dict:
    """Fit and measure one job; returns its metrics (also written to ``metrics.json``).

    A job whose restarts all diverge does not stop a sweep: it writes ``failed.json`` with
    the reason and returns ``{"job", "config", "failed"}``; the others go on.
    """
    from pyrofail.analysis import metrics as m
    from pyrofail.analysis import plots

    folder = Path(folder)
    done = folder / "metrics.json"
    failed = folder / "failed.json"
    if failed.exists() and not done.exists():
        record = read_json(failed)
        if record.get("config") == _clean_config(config):
            return record  # every restart diverged: the same options diverge again
    if done.exists():
        result = read_json(done)
        if result.get("config") == _clean_config(config):
            return result
        raise UsageError(f"{folder} holds a finished job with other options; use a new --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", _clean_config(config))
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))

    truth = zoo.model(config["model"])
    splits = make_splits(truth, config["n_train"], config["n_val"], config["n_test"], seed=config["seed"])
    device = config.get("device", "cpu")
    try:
        result = _fit(config, splits, truth, device, folder, progress)
    except AllRestartsDiverged as e:
        record = {"job": job_id(config), "config": _clean_config(config), "failed": str(e)}
        atomic_write_json(failed, record)
        return record
    model, guide = result.model.cpu(), result.guide.cpu()
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    atomic_torch_save(guide.state_dict(), folder / "guide.pt")

    x_test = splits.test.x
    summary = m.summarize(model, guide, x_test, truth=truth, is_samples=config.get("is_samples", 5000))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        bound = result.objective.per_point(model, guide, x_test).mean()
    summary["test_neg_bound"] = -float(bound[0])
    summary["test_neg_bound_stderr"] = float(bound[1])
    summary["noise_scale"] = float(model.noise_scale)
    figures = plots.job_figures(
        truth, model, splits.test, folder / "figures", title=job_id(config), seed=config["seed"]
    )
    out = {
        "job": job_id(config),
        "config": _clean_config(config),
        "metrics": summary,
        "restarts": result.restarts,
        "selected_restart": result.best,
        "history": result.history,
        "figures": [str(Path(f).relative_to(folder)) for f in figures],
    }
    atomic_write_json(done, out)
    (folder / "fit.ckpt").unlink(missing_ok=True)
    return out


def _fit(config, splits, truth, device, folder, progress):
    return fit(
        splits.train.x,
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
        device=device,
        hidden=config["hidden"],
        init=config["init"],
        learn_noise=config["learn_noise"],
        noise_scale=config.get("noise_scale"),
        guide_options=config["guide_options"],
        objective_options=config["objective_options"],
        checkpoint=folder / "fit.ckpt",
        progress=progress,
    )


def _worker(args):
    config, folder = args
    return run_job(config, folder)


def run_jobs(
    jobs: Iterable[dict], root: str | os.PathLike, workers: int = 1, progress: bool = False
) -> list[dict]:
    """Run every job into ``root/jobs/<job id>``; finished jobs are read back, not re-run."""
    jobs = list(jobs)
    root = Path(root)
    folders = [root / "jobs" / job_id(cfg) for cfg in jobs]
    if workers <= 1:
        results = []
        bar = _bar(progress, len(jobs))
        for cfg, folder in zip(jobs, folders):
            if bar is not None:
                bar.set_description(job_id(cfg))
            results.append(run_job(cfg, folder, progress=progress))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [{**cfg, "threads": cfg.get("threads") or threads} for cfg in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, (cfg, folder)) for cfg, folder in zip(jobs, folders)]
        bar = _bar(progress, len(jobs))
        results = []
        for fut in futures:
            results.append(fut.result())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return results


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="jobs", unit="job", dynamic_ncols=True)
