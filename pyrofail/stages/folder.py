"""A run folder, as every stage sees it: where each stage's files are, and the run's options.

Layout (each stage writes only its own files; ``report.md`` has one author)::

    config.json                    the resolved options, the job list, versions   (analyze)
    jobs/<job>/config.json, model.pt, guide.pt, figures/, metrics.json              (jobs)
    truth/<model>/reference.nc, jobs/<job>/reference.nc                         (references)
    truth/<model>/hardness.json, jobs/<job>/posterior.json, figures/*.png             (bias)
    diagnosis.json                                                                (diagnosis)
    metrics.json, report.md                                                          (report)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from pyrofail import zoo
from pyrofail.runs import read_json

__all__ = ["RunFolder", "data_name", "job_id", "process_id", "truth_of"]


def data_name(source) -> str:
    """A user's data source as a name: a bundled set's name, or a file's stem."""
    return Path(str(source)).stem


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def process_id(config: dict) -> str:
    """The name of a job's data: the model, its other options and its noise scale when the run
    set them (``figure8``, ``figure8-s0.05``, ``figure8-scale1-s0.1414``), or the user's data set
    (``breast_cancer``)."""
    if config.get("data") is not None:
        return data_name(config["data"])
    options = dict(config.get("truth_options") or {})
    noise = options.pop("noise_scale", None)
    name = config["model"] + "".join(f"-{key}{_short(value)}" for key, value in sorted(options.items()))
    return name if noise is None else f"{name}-s{noise:g}"


def job_id(config: dict) -> str:
    """The name of a job's folder: ``<process>-K<k>-<guide>-<objective>``, and the procedure
    when it is not the usual joint training (``...-elbo-libi``)."""
    name = f"{process_id(config)}-K{config['latent_dim']}-{config['guide']}-{config['objective']}"
    procedure = config.get("procedure", "joint")
    return name if procedure == "joint" else f"{name}-{procedure}"


def truth_of(config: dict):
    """A job's ground-truth process, built with the run's ``truth_options``; ``None`` for a
    user's data, which has no ground truth."""
    if config.get("data") is not None:
        return None
    return zoo.model(config["model"], **(config.get("truth_options") or {}))


@dataclass
class RunFolder:
    """The folder of one run and how its stages run: ``workers`` in parallel, with progress
    messages unless ``quiet``."""

    root: Path
    options: dict
    jobs: list
    workers: int = 1
    quiet: bool = True

    @classmethod
    def open(cls, root, workers: int = 1, quiet: bool = True) -> RunFolder:
        """A run folder whose ``config.json`` is written (by :mod:`pyrofail.analyze`)."""
        root = Path(root)
        config = read_json(root / "config.json")
        return cls(root, config["options"], config["jobs"], workers=workers, quiet=quiet)

    def job_dir(self, job) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job_id(job))

    def truth_dir(self, process: str) -> Path:
        return self.root / "truth" / process

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def finished_jobs(self) -> list[dict]:
        """The ``metrics.json`` of every job that finished, in the order of the job list."""
        out = []
        for cfg in self.jobs:
            path = self.job_dir(cfg) / "metrics.json"
            if path.exists():
                out.append(read_json(path))
        return out

    def failed_jobs(self) -> dict:
        """``{job: reason}`` of the jobs whose every restart diverged."""
        out = {}
        for cfg in self.jobs:
            path = self.job_dir(cfg) / "failed.json"
            if path.exists() and not (self.job_dir(cfg) / "metrics.json").exists():
                out[job_id(cfg)] = read_json(path)["failed"]
        return out

    def by_process(self) -> dict[str, list[dict]]:
        """Finished job records grouped by ground truth (:func:`process_id`), in the order of
        the job list."""
        groups: dict[str, list[dict]] = {}
        for record in self.finished_jobs():
            groups.setdefault(process_id(record["config"]), []).append(record)
        return groups

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)
