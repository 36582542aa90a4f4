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
# Options of the posterior stage (after the jobs; see run_posterior): not part of a job.
REFERENCE_OPTIONS = ("reference", "reference_points")
REFERENCE_DRAWS = 500  # reference draws per point: enough for the mode finder and the figures
DEFAULT_REFERENCE_POINTS = 300  # a few hundred points keep the stage to seconds per job


def job_id(config: dict) -> str:
    return f"{config['model']}-K{config['latent_dim']}-{config['guide']}-{config['objective']}"


def expand(options: dict) -> list[dict]:
    """The cartesian product over the list-valued axes (model, latent_dim, guide, objective);
    per-guide and per-objective option tables are resolved for each job."""
    axes = [options[a] if isinstance(options[a], (list, tuple)) else [options[a]] for a in AXES]
    jobs = []
    for model, k, guide, objective in itertools.product(*axes):
        # the posterior stage's options do not change a fit: they stay out of the job's config
        cfg = {k: v for k, v in options.items() if k not in AXES and k not in REFERENCE_OPTIONS}
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


# ----------------------------------------------------------------------------------------
# The posterior stage: after the jobs, their guides and models against reference posteriors
#
# It reads finished job folders only, so the jobs stay independent, and it is resumable:
#   truth/<model>/reference.nc      the ground truth's reference posterior at the analysis points
#   truth/<model>/hardness.json     KL* of the best mean-field Gaussian per point (Cx1)
#   jobs/<job>/reference.nc         the learned model's reference posterior at the same points
#   jobs/<job>/posterior.json       compare() against both, KL* of the learned model, the PMO
#                                   gap at every test point; written last: its presence means done
# The analysis points are the first `reference_points` test points of the job's data.


def reference_settings(options: dict) -> dict | None:
    """The posterior stage's settings of a run (``None`` with ``--no-reference``)."""
    method = options.get("reference", "auto")
    if method is None:
        return None
    return {
        "method": method,
        "points": int(options.get("reference_points", DEFAULT_REFERENCE_POINTS)),
        "draws": REFERENCE_DRAWS,
        "seed": int(options["seed"]),
    }


def load_job(folder: str | os.PathLike):
    """``(config, truth, model, guide)`` of a finished job, rebuilt from its ``config.json``
    the way :func:`pyrofail.fit.fit` builds them, with the saved state dicts (loaded with
    ``weights_only=True``)."""
    from pyrofail.models import LatentGaussian
    from pyrofail.nn import MLP

    folder = Path(folder)
    config = read_json(folder / "config.json")
    truth = zoo.model(config["model"])
    k, d = int(config["latent_dim"]), truth.data_dim
    hidden = tuple(config["hidden"])
    activation = config.get("activation", "leaky_relu")
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave no trace
        noise = config.get("noise_scale") or float(truth.noise_scale)
        model = LatentGaussian(
            MLP((k, *hidden, d), activation), k, d, noise, learn_noise=bool(config["learn_noise"])
        )
        guide = zoo.guide(
            config["guide"],
            latent_dim=k,
            data_dim=d,
            hidden=hidden,
            activation=activation,
            **config.get("guide_options", {}),
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


def analysis_points(config: dict, points: int):
    """``(x_ref, x_test)``: the first ``points`` test points and all of them, as float64."""
    truth = zoo.model(config["model"])
    splits = make_splits(truth, config["n_train"], config["n_val"], config["n_test"], seed=config["seed"])
    x = splits.test.x.double()
    return x[: min(points, x.shape[0])], x


def _reference_or_reason(model, x, settings: dict):
    """The reference posterior, or a sentence saying why it cannot be had here."""
    from pyrofail.analysis.reference import reference_posterior

    try:
        return reference_posterior(
            model, x, settings["method"], num_draws=settings["draws"], seed=settings["seed"]
        ), None
    except ImportError:
        return None, f"the {settings['method']} reference (NUTS) is not available in this installation"


def _tensors_to_lists(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def truth_stage(model_name: str, config: dict, root: Path, settings: dict) -> dict:
    """The ground truth's reference and KL* at the analysis points of ``config``'s data
    (``truth/<model>/``), computed once per process and read back on resume."""
    from pyrofail.analysis import reference as ref_io
    from pyrofail.analysis.compare import reference_modes
    from pyrofail.analysis.diagnose import best_mean_field

    folder = root / "truth" / model_name
    done = folder / "hardness.json"
    sizes = {k: config[k] for k in ("n_train", "n_val", "n_test")}
    key = {"model": model_name, "settings": settings, **sizes}
    truth = zoo.model(model_name)
    x_ref, _ = analysis_points(config, settings["points"])
    if done.exists() and (folder / "reference.nc").exists():
        record = read_json(done)
        if record.get("key") == key:
            return {**record, "reference": ref_io.load(folder / "reference.nc"), "truth": truth, "x": x_ref}
    ref, reason = _reference_or_reason(truth, x_ref, settings)
    if ref is None:
        return {"key": key, "skipped": reason, "truth": truth, "x": x_ref}
    modes = reference_modes(ref, seed=settings["seed"])
    best = best_mean_field(truth, x_ref, ref, modes=modes, seed=settings["seed"])
    ref_io.save(ref, folder / "reference.nc")
    record = {
        "key": key,
        "method": ref_io.method(ref),
        "best_mean_field": {
            "mean": best["mean"],
            "share_hard": best["share_hard"],
            "hard_kl": best["hard_kl"],
            "per_point": best["kl"].tolist(),
        },
    }
    atomic_write_json(done, record)
    return {**record, "reference": ref, "modes": modes, "truth": truth, "x": x_ref}


def posterior_job(folder: str | os.PathLike, truth_record: dict, settings: dict) -> dict:
    """One job's guide and model against the reference posteriors (``posterior.json``)."""
    from pyrofail.analysis import metrics as m
    from pyrofail.analysis import reference as ref_io
    from pyrofail.analysis.compare import compare, reference_modes
    from pyrofail.analysis.diagnose import best_mean_field

    folder = Path(folder)
    done = folder / "posterior.json"
    config = read_json(folder / "config.json")
    key = {"settings": settings, "job": job_id(config)}
    if done.exists():
        record = read_json(done)
        if record.get("key") == key:
            return record
    if "skipped" in truth_record:
        record = {"key": key, "job": job_id(config), "skipped": truth_record["skipped"]}
        atomic_write_json(done, record)
        return record
    config, truth, model, guide = load_job(folder)
    model, guide = model.double(), guide.double()
    x_ref, x_test = analysis_points(config, settings["points"])
    ref, reason = _reference_or_reason(model, x_ref, settings)
    if ref is None:
        record = {"key": key, "job": job_id(config), "skipped": reason}
        atomic_write_json(done, record)
        return record
    seed = settings["seed"]
    modes = reference_modes(ref, seed=seed)
    truth_modes = truth_record.get("modes")
    if truth_modes is None:
        truth_modes = reference_modes(truth_record["reference"], seed=seed)
        truth_record["modes"] = truth_modes
    result = compare(
        model,
        guide,
        x_ref,
        ref,
        truth,
        truth_reference=truth_record["reference"],
        modes=modes,
        truth_modes=truth_modes,
        seed=seed,
    )
    best = None
    if model.latent_dim == truth.latent_dim and model.latent_dim <= 2:
        best = best_mean_field(model, x_ref, ref, modes=modes, seed=seed)
    # the PMO gap at every test point, for the map over data space
    nelbo = m.negative_elbo(model, guide, x_test, num_samples=100, seed=seed)
    lpx = m.log_marginal(model, x_test, guide=guide, num_samples=1000, seed=seed)["per_point"]
    pmo_all = lpx.double() + nelbo["per_point"].double()
    ref_io.save(ref, folder / "reference.nc")
    record = {
        "key": key,
        "job": job_id(config),
        "reference_method": result["reference_method"],
        "n_points": result["n_points"],
        "model": {
            "mean": result["model"]["mean"],
            "per_point": _tensors_to_lists(result["model"]["per_point"]),
        },
        "truth": None
        if result["truth"] is None
        else {
            "mean": result["truth"]["mean"],
            "per_point": _tensors_to_lists(result["truth"]["per_point"]),
        },
        "mleo": {
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


def _evidence_side(record: dict) -> dict:
    truth_side = record.get("truth") or {}
    return {
        "label": record["job"],
        "kl": record["best_mean_field"]["per_point"],
        "mleo": record["mleo"]["per_point"],
        "pmo_gap": record["model"]["per_point"]["pmo_gap"],
        "posterior_shift": (truth_side.get("per_point") or {}).get("posterior_shift"),
    }


def diagnose_process(truth_record: dict, records: list[dict], configs: dict, learn_noise: bool) -> dict:
    """The diagnosis of one process from its truth record and its jobs' posterior records:
    the MFG-VAE is the job with the mean-field guide and the ELBO at the true K; the richer
    fit is, among the other jobs at the true K, the one with the best p(x) (lowest MLEO)."""
    from pyrofail.analysis.diagnose import conclude, evidence

    if "skipped" in truth_record:
        return {"failure": "not diagnosed", "sentences": [f"Not diagnosed: {truth_record['skipped']}."]}
    k_true = truth_record["truth"].latent_dim
    usable = [
        r
        for r in records
        if "skipped" not in r
        and configs[r["job"]]["latent_dim"] == k_true
        and r.get("best_mean_field") is not None
    ]
    mfg = [
        r
        for r in usable
        if configs[r["job"]]["guide"] == "mean_field" and configs[r["job"]]["objective"] == "elbo"
    ]
    if not mfg:
        return {
            "failure": "not diagnosed",
            "sentences": [
                f"Not diagnosed: the diagnosis needs a job with the mean_field guide and the elbo "
                f"objective at the true K = {k_true}."
            ],
        }
    others = sorted((r for r in usable if r is not mfg[0]), key=lambda r: (r["mleo"]["mean"], r["job"]))
    richer = _evidence_side(others[0]) if others else None
    truth_kl = truth_record["best_mean_field"]["per_point"]
    return conclude(evidence(truth_kl, _evidence_side(mfg[0]), richer), learn_noise=learn_noise)


def _posterior_worker(args):
    """One job's :func:`posterior_job` in a pool process: the truth's record is read back
    from the run folder (the parent wrote it), not sent over."""
    name, config, root, settings, threads = args
    torch.set_num_threads(threads)
    truth_record = truth_stage(name, config, root, settings)
    return posterior_job(root / "jobs" / job_id(config), truth_record, settings)


def _posterior_records(by_model, truths, root, settings, workers, say) -> dict:
    """``{job: posterior record}`` of every job, ``workers`` at a time (NUTS references of
    K >= 3 models take minutes each: the stage's slow part)."""
    tasks = [(name, r["config"]) for name, group in by_model.items() for r in group]
    if workers <= 1:
        records = {}
        for name, config in tasks:
            say(f"posterior: {job_id(config)}")
            records[job_id(config)] = posterior_job(root / "jobs" / job_id(config), truths[name], settings)
        return records
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    # the NUTS references of the largest K take longest: start them first
    tasks.sort(key=lambda task: -task[1]["latent_dim"])
    say(f"posterior: {len(tasks)} jobs, {workers} at a time")
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        args = [(name, config, root, settings, threads) for name, config in tasks]
        return {job_id(config): rec for (_, config), rec in zip(tasks, pool.map(_posterior_worker, args))}


def run_posterior(
    results: list[dict], root: str | os.PathLike, options: dict, progress: bool = False, workers: int = 1
) -> dict | None:
    """The posterior stage of a run (module comment above): per process the truth's
    reference and KL*, per job :func:`posterior_job` (``workers`` jobs at a time), per
    process the diagnosis and the figures. Returns ``{"settings", "jobs": {job: record},
    "diagnoses": {model: ...}, "figures": [paths relative to the run]}``; ``None`` with
    ``--no-reference``."""
    from pyrofail.analysis import posterior_plots as pp
    from pyrofail.analysis import reference as ref_io

    settings = reference_settings(options)
    if settings is None:
        return None
    root = Path(root)
    by_model: dict[str, list[dict]] = {}
    for r in results:
        by_model.setdefault(r["config"]["model"], []).append(r)
    out = {"settings": settings, "jobs": {}, "diagnoses": {}, "figures": []}
    say = _say(progress)
    truths = {}
    for name, group in by_model.items():
        say(f"posterior: {name}: ground-truth reference ({settings['method']})")
        truths[name] = truth_stage(name, group[0]["config"], root, settings)
    all_records = _posterior_records(by_model, truths, root, settings, workers, say)
    for name, group in by_model.items():
        truth_record = truths[name]
        records = [all_records[r["job"]] for r in group]
        configs = {r["job"]: r["config"] for r in group}
        for rec in records:
            out["jobs"][rec["job"]] = rec
        learn_noise = bool(options.get("learn_noise"))
        out["diagnoses"][name] = diagnose_process(truth_record, records, configs, learn_noise)
        if "skipped" in truth_record:
            continue
        # figures: posteriors at points spread over the truth's KL*, and the PMO gap map
        picks = pp.choose_points(truth_record["best_mean_field"]["per_point"])
        fits = []
        k_true = truth_record["truth"].latent_dim
        for rec in records:
            if "skipped" in rec or configs[rec["job"]]["latent_dim"] != k_true:
                continue
            folder = root / "jobs" / rec["job"]
            _, _, model, guide = load_job(folder)
            fits.append((rec["job"], model, guide, ref_io.load(folder / "reference.nc")))
        figures = root / "figures"
        if fits:
            path = pp.posterior_figure(
                figures / f"posterior-{name}.png",
                truth_record["truth"],
                truth_record["reference"],
                picks,
                fits,
                title=name,
            )
            out["figures"].append(str(path.relative_to(root)))
        gaps = {rec["job"]: rec["pmo_gap_all_test_points"] for rec in records if "skipped" not in rec}
        if gaps:
            _, x_test = analysis_points(group[0]["config"], settings["points"])
            marked = truth_record["x"][torch.as_tensor(picks)]
            path = pp.pmo_gap_figure(
                figures / f"pmo-gap-{name}.png",
                x_test,
                gaps,
                marked=marked,
                truth=truth_record["truth"],
                title=name,
            )
            out["figures"].append(str(path.relative_to(root)))
    return out


def _say(enabled: bool):
    import sys

    def say(text: str) -> None:
        if enabled:
            print(text, file=sys.stderr)

    return say
