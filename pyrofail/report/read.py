"""Everything the report renders, read once from the run folder's records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.config import RunOptions
from pyrofail.records.data import DataRecord
from pyrofail.records.downstream import DataTasks, DownstreamSummary, JobTasks, TruthTasks
from pyrofail.records.findings import Findings
from pyrofail.records.folder import process_id
from pyrofail.records.posterior import PosteriorRecord, TruthHardness
from pyrofail.records.program import ProgramCheck
from pyrofail.records.regression import RegressionRecord
from pyrofail.records.verdict import Verdicts

__all__ = ["DownstreamRecords", "RunRecords"]


@dataclass
class DownstreamRecords:
    """The downstream stage's records of a run: its ``summary`` (the comparisons), and per
    process each job's tasks (``jobs``: ``{process: {job: JobTasks or DataTasks}}``) and the
    truth's (``truth``: ``{process: TruthTasks}``)."""

    summary: DownstreamSummary
    jobs: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)


@dataclass
class RunRecords:
    """The records of a run: options, finished and failed jobs, reference settings, posterior
    and hardness records, verdicts, findings, a user's data description, downstream and
    regression results, and the run-level figures."""

    options: RunOptions
    jobs: list[JobRecord]
    failed: dict
    settings: dict | None = None
    posterior: dict[str, PosteriorRecord] = field(default_factory=dict)
    hardness: dict[str, TruthHardness] = field(default_factory=dict)
    verdicts: Verdicts | None = None
    findings: Findings = field(default_factory=Findings)
    data: DataRecord | None = None
    downstream: DownstreamRecords | None = None
    regression: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    program: ProgramCheck | None = None  # the check of a user's own Pyro program

    @classmethod
    def read(cls, folder: RunFolder) -> RunRecords:
        jobs, _, posterior = folder.results()  # cross-fitted folds pooled: one job tested on every row
        out = cls(folder.options, jobs, folder.failed_jobs(), folder.reference_settings)
        out.posterior = posterior
        root = folder.root
        out.data = folder.read(DataRecord, root / "data.json")
        summary = folder.read(DownstreamSummary, root / "downstream.json")
        if summary is not None:
            out.downstream = DownstreamRecords(summary)
            for name, group in folder.by_process().items():
                if name not in summary.processes:
                    continue
                kind = DataTasks if summary.processes[name].data else JobTasks
                out.downstream.jobs[name] = {
                    r.job: rec
                    for r in group
                    if (rec := folder.read(kind, folder.job_dir(r.job) / "downstream.json"))
                }
                out.downstream.truth[name] = folder.read(
                    TruthTasks, folder.truth_dir(name) / "downstream.json"
                )
        for name in folder.options.regression or []:
            record = folder.read(RegressionRecord, root / "regression" / f"{name}.json")
            if record is not None:
                out.regression[name] = record
        out.findings = folder.read(Findings, root / "findings.json") or Findings()
        out.program = folder.read(ProgramCheck, root / "program.json")
        out.verdicts = folder.read(Verdicts, root / "verdicts.json")
        for name in dict.fromkeys(process_id(r.config) for r in out.jobs):
            record = folder.read(TruthHardness, folder.truth_dir(name) / "hardness.json")
            if record is not None:
                out.hardness[name] = record
            for stem in (f"posterior-{name}", f"pmo-gap-{name}"):
                if (folder.figures / f"{stem}.png").exists():
                    out.figures.append(f"figures/{stem}.png")
        if out.verdicts is not None:
            out.figures += [f"figures/failure-map-{p}.png" for p in out.verdicts.failure_map]
        return out

    @property
    def has_posterior(self) -> bool:
        return self.settings is not None and self.verdicts is not None and bool(self.posterior)

    @property
    def on_data(self) -> bool:
        return self.options.on_data

    def job(self, name: str) -> JobRecord | None:
        return next((r for r in self.jobs if r.job == name), None)

    def relative(self, path: str, root: Path) -> str:
        return str(Path(path).relative_to(root))
