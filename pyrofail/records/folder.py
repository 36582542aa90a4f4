"""A run folder, as every stage sees it: where each record lives, and how it is read and written.

The layout, and who writes each file (``docs/run-folder.md`` documents every record)::

    config.json                      the resolved options, the job list, versions        (analyze)
    data.json                        a user's data: source, split, standardisation       (analyze)
    jobs/<job>/config.json, model.pt, guide.pt, test.pt, test_points.json, metrics.json    (jobs)
    truth/<process>/reference.nc, jobs/<job>/reference.nc                           (references)
    truth/<process>/hardness.json, jobs/<job>/posterior.json, figures/                    (bias)
    verdicts.json, failure_map.json, figures/                                         (diagnosis)
    findings.json                                                                    (findings)
    downstream.json, truth/<process>/downstream.json, jobs/<job>/downstream.json    (downstream)
    regression/<process>.json                                                       (regression)
    metrics.json, report.md                                                             (report)

Every write is atomic; checkpoints load with ``weights_only=True``. :meth:`RunFolder.cached`
returns a record already written for the same key, else computes and writes it, so that a
resumed run recomputes only what is missing or out of date.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pyrofail import zoo
from pyrofail.errors import UsageError
from pyrofail.records.config import JobConfig, RunOptions
from pyrofail.records.job import Build, FailedJob, JobRecord, TestPoints
from pyrofail.records.schema import StaleRecord
from pyrofail.runs import atomic_torch_save, atomic_write_json, read_json

__all__ = [
    "DRAWS",
    "RunFolder",
    "data_name",
    "has_reference",
    "job_data",
    "job_id",
    "load_fit",
    "load_test_data",
    "process_id",
    "save_test_data",
    "truth_of",
]

DRAWS = 500  # reference draws per point: enough for the mode finder and the figures
# On a user's data, references of learned models with more latent dimensions than this are
# not computed (NUTS over K > 3 on a few hundred points is hours on two cores).
MAX_K_WITHOUT_TRUTH = 3


def data_name(source) -> str:
    """A user's data source as a name: a bundled set's name, or a file's stem."""
    return Path(str(source)).stem


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def process_id(config: JobConfig) -> str:
    """The name of a job's data: the process, its other options and the truth's noise scale
    when the run set them (``figure8``, ``figure8-s0.05``, ``figure8-scale1-s0.1414``), or the
    user's data set (``breast_cancer``)."""
    if config.data is not None:
        return data_name(config.data)
    options = config.truth_options
    name = config.process + "".join(f"-{key}{_short(value)}" for key, value in sorted(options.items()))
    return name if config.truth_noise is None else f"{name}-s{config.truth_noise:g}"


def job_id(config: JobConfig) -> str:
    """The name of a job's folder: ``<process>-K<k>-<guide>-<objective>``, the procedure when it
    is not the usual joint training (``...-elbo-libi``), and the fold with cross-fitting
    (``...-elbo-fold2``)."""
    name = f"{process_id(config)}-K{config.latent_dim}-{config.guide}-{config.objective}"
    name = name if config.procedure == "joint" else f"{name}-{config.procedure}"
    return name if config.fold is None else f"{name}-fold{config.fold}"


def truth_of(config: JobConfig):
    """A job's ground-truth process, built with the run's options for it and the truth's noise
    scale; ``None`` for a user's data, which has no ground truth."""
    if config.data is not None:
        return None
    options = dict(config.truth_options)
    if config.truth_noise is not None:
        options["noise_scale"] = float(config.truth_noise)
    return zoo.model(config.process, **options)


def job_data(config: JobConfig):
    """``(truth, splits)``: the job's ground truth (``None`` for a user's data) and its seeded
    train/validation/test data, drawn again or read again from the user's source."""
    from pyrofail.data import load_splits, make_splits

    if config.data is not None:
        return None, load_splits(config.data, **(config.data_options or {}), seed=config.seed)
    truth = truth_of(config)
    return truth, make_splits(truth, config.n_train, config.n_val, config.n_test, seed=config.seed)


def has_reference(config: JobConfig) -> bool:
    """Whether the run computes a reference posterior for this job's learned model."""
    if config.data is not None:
        return config.latent_dim <= MAX_K_WITHOUT_TRUTH
    truth = truth_of(config)
    if not getattr(truth, "has_density", True):
        return False  # data on a manifold (degenerate_line): no posterior reference to compare with
    return getattr(truth, "num_classes", None) is None  # not for the semi-supervised model


@dataclass
class RunFolder:
    """The folder of one run and how its stages run: ``workers`` processes at a time with
    ``threads`` torch threads each, with progress messages unless ``quiet``."""

    root: Path
    options: RunOptions
    jobs: list[JobConfig]
    workers: int = 1
    threads: int = 1
    quiet: bool = True

    @classmethod
    def open(cls, root, workers: int = 1, threads: int = 1, quiet: bool = True) -> RunFolder:
        """A run folder whose ``config.json`` is written (by :mod:`pyrofail.analyze`)."""
        root = Path(root)
        config = read_json(root / "config.json")
        jobs = [JobConfig.from_dict(job) for job in config["jobs"]]
        options = RunOptions.from_dict(config["options"])
        return cls(root, options, jobs, workers=workers, threads=threads, quiet=quiet)

    # -- paths ---------------------------------------------------------------------------------
    def job_dir(self, job) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job_id(job))

    def truth_dir(self, process: str) -> Path:
        return self.root / "truth" / process

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def reference_settings(self) -> dict | None:
        """How the references are computed (``None`` with ``--no-reference``): the method, the
        analysis points (the first ``points`` test points), draws per point and the seed."""
        method = self.options.reference
        if method is None:
            return None
        return {
            "method": method,
            "points": int(self.options.reference_points),
            "draws": DRAWS,
            "seed": int(self.options.seed),
        }

    def test_data(self, job: str) -> dict:
        """``{"x", "z", "y"}``: a finished job's test split."""
        return load_test_data(self.job_dir(job))

    def analysis_points(self, job: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_ref, x_test)`` of a finished job, as float64: the first ``points`` test points
        (where references are computed) and all of them."""
        x = self.test_data(job)["x"].double()
        return x[: min(self.reference_settings["points"], x.shape[0])], x

    def fitted(self, record: JobRecord):
        """``(model, guide)`` of a finished job (:func:`load_fit`)."""
        return load_fit(self.job_dir(record.job), record.build)

    # -- records -------------------------------------------------------------------------------
    @staticmethod
    def read(cls, path: Path):
        """The record of type ``cls`` at ``path``; ``None`` if the file is missing or was
        written under another version of the record."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            return cls.from_json(read_json(path))
        except StaleRecord:
            return None

    @staticmethod
    def write(record, path: Path) -> None:
        atomic_write_json(path, record.to_json())

    @classmethod
    def cached(cls, path: Path, record_cls, key, compute: Callable[[], object]):
        """The record at ``path`` if it was computed for ``key`` (its ``key`` field), else
        ``compute()``, written to ``path`` and returned."""
        record = cls.read(record_cls, path)
        if record is not None and record.key == key:
            return record
        record = compute()
        cls.write(record, path)
        return record

    def finished_jobs(self) -> list[JobRecord]:
        """The record of every job that finished, in the order of the job list."""
        out = []
        for cfg in self.jobs:
            record = self.read(JobRecord, self.job_dir(cfg) / "metrics.json")
            if record is not None:
                out.append(record)
        return out

    def failed_jobs(self) -> dict:
        """``{job: reason}`` of the jobs whose every restart diverged."""
        out = {}
        for cfg in self.jobs:
            record = self.read(FailedJob, self.job_dir(cfg) / "failed.json")
            if record is not None and not (self.job_dir(cfg) / "metrics.json").exists():
                out[job_id(cfg)] = record.failed
        return out

    def by_process(self) -> dict[str, list[JobRecord]]:
        """Finished job records grouped by process (:func:`process_id`), in job-list order."""
        groups: dict[str, list[JobRecord]] = {}
        for record in self.finished_jobs():
            groups.setdefault(process_id(record.config), []).append(record)
        return groups

    def test_points(self, job: str) -> TestPoints | None:
        return self.read(TestPoints, self.job_dir(job) / "test_points.json")

    def results(self) -> tuple[list[JobRecord], dict, dict]:
        """``(jobs, {job: TestPoints}, {job: PosteriorRecord})`` of the finished jobs, the folds
        of a cross-fitted fit pooled into one job tested on every row (:mod:`~pyrofail.records.folds`)."""
        from pyrofail.records.folds import pool
        from pyrofail.records.posterior import PosteriorRecord

        jobs = self.finished_jobs()
        points = {r.job: p for r in jobs if (p := self.test_points(r.job)) is not None}
        posterior = {
            r.job: p
            for r in jobs
            if (p := self.read(PosteriorRecord, self.job_dir(r.job) / "posterior.json"))
        }
        return pool(jobs, points, posterior)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


# -- a finished job's data and fitted objects, without regenerating anything ----------------------


def save_test_data(folder: Path, test) -> None:
    """The job's test split (``x``, and the true ``z`` and labels ``y`` where known) as
    ``test.pt``, so that later stages read it instead of regenerating the data."""
    atomic_torch_save({"x": test.x, "z": test.z, "y": test.y}, Path(folder) / "test.pt")


def load_test_data(folder: Path) -> dict:
    """``{"x", "z", "y"}`` of a finished job's test split (``z``/``y`` ``None`` if unknown)."""
    path = Path(folder) / "test.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; the job has not finished") from None


def load_fit(folder: Path, build: Build):
    """``(model, guide)`` of a finished job, rebuilt as the fit built them (``build``) with the
    saved state dicts, loaded with ``weights_only=True``, in eval mode."""
    from pyrofail.training import build as builder

    folder = Path(folder)
    options = {"hidden": tuple(build.hidden), "activation": build.activation}
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave no trace
        model = builder.learned_model(
            build.latent_dim,
            build.data_dim,
            build.noise_scale,
            learn_noise=build.learn_noise,
            likelihood=build.likelihood,
            noise_per_feature=build.noise_per_feature,
            num_classes=build.num_classes,
            **options,
        )
        guide = builder.guide(
            build.guide,
            build.latent_dim,
            build.data_dim,
            options=build.guide_options,
            num_classes=build.num_classes,
            **options,
        )
    for module, name in ((model, "model.pt"), (guide, "guide.pt")):
        try:
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"{folder / name} does not exist; the job has not finished") from None
        except Exception as e:  # noqa: BLE001 - any unpickling failure: not our checkpoint
            raise UsageError(f"{folder / name} is not a state dict ({type(e).__name__})") from None
        module.load_state_dict(state)
    return model.eval(), guide.eval()
