"""Stage ``jobs``: fit every job and measure it on its test points.

A job is one process (or a user's data set) x K x guide x objective x procedure, a pure function
of its resolved config. It writes only inside its own folder ``jobs/<job>/``: ``config.json``,
``fit.ckpt`` while training (deleted when done), ``model.pt`` and ``guide.pt`` (state dicts of
the selected restart), ``test.pt`` (the test split), ``test_points.json``
(:class:`~pyrofail.records.TestPoints`: every test point's values, for paired comparisons),
``figures/`` and, written last, ``metrics.json`` (:class:`~pyrofail.records.JobRecord`): a
folder with ``metrics.json`` is finished and never recomputed. A job whose every restart
diverges writes ``failed.json`` instead, and the others go on.

**log p(x) is exact wherever it can be.** The grid integrates over the latent space, so it
applies at K ≤ 2 whatever the data's dimension D: on a zoo process and on a user's table alike,
the test −log p(x), the PMO gap and the MLEO are quadrature. For K > 2, importance sampling from
the guide, with every point's PSIS k̂ recorded and the points above 0.7 counted and flagged
beside the number, and on a user's data a 0.01-nat target for the Monte Carlo error whose miss
is flagged too.

Reads: ``config.json``. Writes: ``jobs/<job>/*``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch

from pyrofail.analysis import aggregate, importance, metrics, semisupervised
from pyrofail.analysis.figures import plots
from pyrofail.analysis.reference import grid
from pyrofail.errors import AllRestartsDiverged, UsageError
from pyrofail.estimate import Estimate
from pyrofail.fit import fit
from pyrofail.labels import hide_labels
from pyrofail.records import (
    Build,
    FailedJob,
    FitMetrics,
    JobRecord,
    M2Metrics,
    Restart,
    RunFolder,
    TestPoints,
)
from pyrofail.records.config import JobConfig
from pyrofail.records.folder import job_data, job_id, save_test_data
from pyrofail.runs import atomic_torch_save, atomic_write_json
from pyrofail.stages.pool import run_tasks

__all__ = ["IS_TARGET_STDERR", "evaluate", "run", "run_job"]

# The Monte Carlo error a user's importance-sampled test log p(x) aims at (K > 2 only).
IS_TARGET_STDERR = 0.01


def labelled(truth) -> bool:
    """Whether a ground truth has labels (a semi-supervised process such as ``semicircle``)."""
    return getattr(truth, "num_classes", None) is not None


def run_job(config: JobConfig, folder: str | os.PathLike, progress: str | bool = False) -> dict:
    """Fit and measure one job; returns ``{"job", "failed"}`` (``failed``: ``None``, or why
    every restart diverged). The record is ``metrics.json`` in ``folder``. ``progress``:
    ``"bar"`` (the training's progress bar, on a terminal), ``"lines"`` (a plain line when the
    fit and the measuring start, for logs and parallel workers) or ``False``."""
    folder = Path(folder)
    done, failed = folder / "metrics.json", folder / "failed.json"
    name = job_id(config)
    gave_up = RunFolder.read(FailedJob, failed)
    if gave_up is not None and not done.exists() and gave_up.config == config:
        return {"job": name, "failed": gave_up.failed}  # the same options diverge again
    finished = RunFolder.read(JobRecord, done)
    if finished is not None:
        if finished.config == config:
            return {"job": name, "failed": None}
        raise UsageError(f"{folder} holds a finished job with other options; use a new --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", config.to_dict())
    truth, splits = job_data(config)
    start = time.perf_counter()
    say = _say if progress == "lines" else (lambda text: None)
    say(f"{name}: fitting {config.restarts} restarts x {config.steps} steps")
    try:
        result = _fit(config, splits, truth, folder, progress == "bar")
    except AllRestartsDiverged as e:
        RunFolder.write(FailedJob(name, config, str(e)), failed)
        return {"job": name, "failed": str(e)}
    model, guide = result.model.cpu().eval(), result.guide.cpu().eval()
    atomic_torch_save(model.state_dict(), folder / "model.pt")
    atomic_torch_save(guide.state_dict(), folder / "guide.pt")
    save_test_data(folder, splits.test)
    say(f"{name}: measuring on {splits.test.x.shape[0]} test points")
    summary, points = evaluate(model, guide, result.objective, splits.test, truth, config)
    RunFolder.write(points, folder / "test_points.json")
    if labelled(truth):
        figures = plots.class_curves_figure(truth, model, splits.test, folder / "figures", title=name)
    else:
        figures = plots.job_figures(
            truth, model, splits.test, folder / "figures", title=name, seed=config.seed
        )
    record = JobRecord(
        job=name,
        config=config,
        metrics=summary,
        restarts=[Restart(**r) for r in result.restarts],
        selected_restart=result.best,
        history=result.history,
        build=_build(result.config, config),
        figures=[str(Path(f).relative_to(folder)) for f in figures],
        seconds=time.perf_counter() - start,
    )
    RunFolder.write(record, done)
    (folder / "fit.ckpt").unlink(missing_ok=True)
    (folder / "fit.likelihood.pt").unlink(missing_ok=True)
    return {"job": name, "failed": None}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _build(fit_config: dict, config: JobConfig) -> Build:
    return Build(
        latent_dim=int(fit_config["latent_dim"]),
        data_dim=int(fit_config["data_dim"]),
        noise_scale=float(fit_config["noise_scale"] or 1.0),
        learn_noise=bool(fit_config["learn_noise"]),
        likelihood=fit_config.get("likelihood", "gaussian"),
        noise_per_feature=bool(fit_config.get("noise_per_feature", False)),
        num_classes=fit_config.get("num_classes"),
        hidden=[int(h) for h in fit_config["hidden"]],
        activation=fit_config["activation"],
        guide=config.guide,
        guide_options=dict(config.guide_options),
    )


def evaluate(model, guide, objective, test, truth, config: JobConfig) -> tuple[FitMetrics, TestPoints]:
    """The fit's measures on the test points (:class:`~pyrofail.records.FitMetrics`) and every
    point's values (:class:`~pyrofail.records.TestPoints`); means carry the sampling error over
    the points with the Monte Carlo error in quadrature."""
    x, seed = test.x, config.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bound = objective.per_point(model, guide, x)
        trained = bound if labelled(truth) else objective.training_bound(model, guide, x)
    out = {
        "n_test": int(x.shape[0]),
        "test_neg_bound": Estimate.of(-bound.value, float(bound.mean()[1])),
        "test_neg_training_bound": Estimate.of(-trained.value, float(trained.mean()[1])),
    }
    if hasattr(objective, "trained_on"):
        out["trained_on"] = objective.trained_on(guide)
    if hasattr(model, "noise_scale"):
        out["noise_scale"] = model.noise_scale.tolist()
    if labelled(truth):
        summary = semisupervised.summarize(model, guide, test.x, test.y, truth, seed=seed)
        cf = {
            method: semisupervised.counterfactual_error(
                model, guide, test.x, test.y, truth, seed=seed, method=method
            )
            for method in ("model", "guide")
        }
        out["semi_supervised"] = _m2_metrics(summary, test.x.shape[0])
        points = TestPoints(
            neg_elbo=[],
            neg_bound=(-bound.value).tolist(),
            log_px=[],
            mutual_information=[],
            counterfactual_error=cf["model"]["per_point"].tolist(),
            counterfactual_error_guide=cf["guide"]["per_point"].tolist(),
        )
        return FitMetrics(**out), points
    nelbo = metrics.negative_elbo(model, guide, x, 100, seed)
    lp, lp_stderr, flag, method, pareto_k = _log_px(model, guide, x, truth, config)
    mc = float(lp_stderr.double().pow(2).sum().sqrt() / x.shape[0]) if lp_stderr is not None else 0.0
    mi = metrics.mutual_information(guide, x, seed=seed, per_point=True).double()  # (N, K)
    out.update(
        test_neg_elbo=Estimate.of(nelbo["per_point"], nelbo["stderr"]),
        test_neg_log_px=Estimate.of(-lp, mc, exact=method == "grid", flag=flag),
        log_px_method=method,
        pmo_gap=Estimate.of(lp + nelbo["per_point"].double(), math.hypot(mc, nelbo["stderr"]), flag=flag),
        mutual_information=[Estimate.of(mi[:, i]) for i in range(mi.shape[1])],
        avg_mutual_information=Estimate.of(mi.mean(1)),
        pareto_k_bad=None if pareto_k is None else int((pareto_k > importance.K_HAT_MAX).sum()),
    )
    if config.aggregate_kl and method == "grid":
        # runs with LiBI: the aggregate posterior's KL from p(z), its finite-sample bias removed
        out["aggregate_kl"] = aggregate.aggregate_kl(model, x, seed=seed)
    truth_lp = None
    if truth is not None:
        truth_lp = metrics.log_px(truth, x)["per_point"].double()
        out["mleo"] = Estimate.of(truth_lp - lp, mc, exact=method == "grid", flag=flag)
        out["truth_neg_log_px"] = Estimate.of(-truth_lp, exact=True)
    points = TestPoints(
        neg_elbo=nelbo["per_point"].tolist(),
        neg_bound=(-bound.value).tolist(),
        log_px=lp.tolist(),
        mutual_information=mi.tolist(),
        log_px_stderr=None if lp_stderr is None else lp_stderr.tolist(),
        pareto_k=None if pareto_k is None else pareto_k.tolist(),
        truth_log_px=None if truth_lp is None else truth_lp.tolist(),
    )
    return FitMetrics(**out), points


def _log_px(model, guide, x, truth, config):
    """``(log p(x) per point, its Monte Carlo errors or None, flag, method, PSIS k̂ or None)``:
    quadrature at K ≤ 2, else importance sampling from the guide."""
    if model.latent_dim <= grid.MAX_K:
        lp = metrics.log_px(model, x, method="grid")["per_point"].double()
        return lp, None, None, "grid", None
    target = IS_TARGET_STDERR if truth is None else None
    est = importance.sampled_log_px(
        model, guide, x, num_samples=config.is_samples, seed=config.seed, target_stderr=target
    )
    flags = []
    if est.bad_points:
        flags.append(f"k̂ > {importance.K_HAT_MAX} at {est.bad_points} of {x.shape[0]} points")
    if target is not None and est.mean_stderr() > target:
        flags.append(f"Monte Carlo error {est.mean_stderr():.3f} above the {target} target")
    return est.value.double(), est.stderr, "; ".join(flags) or None, f"is{est.num_samples}", est.pareto_k


def _m2_metrics(s: dict, n: int) -> M2Metrics:
    def est(key):
        return Estimate(float(s[key]), float(s[f"{key}_stderr"]), n)

    return M2Metrics(
        separation_ratio=float(s["separation_ratio"]),
        counterfactual_error_model=est("counterfactual_error_model"),
        counterfactual_error_guide=est("counterfactual_error_guide"),
        mleo=est("mleo"),
        mleo_class0=float(s["mleo_class0"]),
        mleo_class1=float(s["mleo_class1"]),
        accuracy=est("accuracy"),
        bayes_accuracy=float(s["bayes_accuracy"]),
    )


def _labels(config: JobConfig, splits) -> dict:
    """The labels a semi-supervised job trains on: ``labelled_fraction`` of the training and
    the validation points keep theirs (seeded), the others are unlabelled (``-1``)."""
    fraction = float(config.labelled_fraction)
    return {
        "y": hide_labels(splits.train.y, fraction, seed=config.seed),
        "y_val": hide_labels(splits.val.y, fraction, seed=config.seed + 1),
    }


# the options of a job config that pyrofail.fit takes under the same name (every other option
# of pyrofail.fit keeps its own default, or is named below)
FIT_KEYS = (
    "latent_dim",
    "guide",
    "objective",
    "restarts",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "hidden",
    "init",
    "learn_noise",
    "guide_options",
    "objective_options",
    "device",
    "pretrain_steps",
    "noise_scale",
    "likelihood",
    "noise_per_feature",
    "procedure",
    "procedure_options",
)


def _fit(config: JobConfig, splits, truth, folder, progress):
    return fit(
        splits.train.x,
        **(_labels(config, splits) if labelled(truth) else {}),
        **{k: getattr(config, k) for k in FIT_KEYS},
        x_val=splits.val.x,
        truth=truth,
        checkpoint=folder / "fit.ckpt",
        progress=progress,
    )


def run(folder: RunFolder) -> None:
    """Run every job of the run that has not finished, ``folder.workers`` at a time."""
    progress = False
    if not folder.quiet:
        progress = "bar" if folder.workers <= 1 and sys.stderr.isatty() else "lines"
    jobs = sorted(folder.jobs, key=cost, reverse=True)  # the longest first
    tasks = [(cfg, folder.job_dir(cfg), progress) for cfg in jobs]
    run_tasks(run_job, tasks, folder.workers, threads=folder.threads, label="jobs", quiet=folder.quiet)


def cost(config: JobConfig) -> tuple[int, int]:
    """A job's training work, to start the longest jobs first: restarts × steps × particles per
    point, the latent dimension breaking ties. Longest-processing-time-first scheduling keeps a
    long job from starting last while the other workers go idle (on ``table1`` the clusters
    K = 3 IWAE job ran 6 minutes alone at the end); each job is a pure function of its config, so
    the order changes no number."""
    particles = int(config.objective_options.get("num_particles") or 1)
    return config.restarts * config.steps * particles, config.latent_dim
