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

from pyrofail.runs import read_json

__all__ = ["RunFolder", "job_id"]


def job_id(config: dict) -> str:
    """The name of a job's folder: ``<model>-K<k>-<guide>-<objective>``."""
    return f"{config['model']}-K{config['latent_dim']}-{config['guide']}-{config['objective']}"


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

    def truth_dir(self, model: str) -> Path:
        return self.root / "truth" / model

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

    def by_model(self) -> dict[str, list[dict]]:
        """Finished job records grouped by process, in the order of the job list."""
        groups: dict[str, list[dict]] = {}
        for record in self.finished_jobs():
            groups.setdefault(record["config"]["model"], []).append(record)
        return groups

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)
