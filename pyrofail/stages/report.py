"""Stage ``report``: ``report.md`` and ``metrics.json``, rendered from the records.

The report's prose has one author, :mod:`pyrofail.report`; this stage only reads the records
and writes the two files. ``metrics.json`` gathers the summary records of every stage (the
per-point values stay in the job folders).

Reads: every record of the run. Writes: ``metrics.json``, ``report.md``.
"""

from __future__ import annotations

from pyrofail import report
from pyrofail.estimate import Estimate
from pyrofail.records import RunFolder
from pyrofail.records.schema import encode
from pyrofail.runs import atomic_write_json, atomic_write_text

__all__ = ["metrics_summary", "run"]


def metrics_summary(res: report.RunRecords) -> dict:
    """The content of the run's ``metrics.json``: every job's metrics and restarts, the
    failed jobs, the findings, the posterior-bias means and the verdicts."""
    out = {
        "jobs": {
            r.job: {
                "metrics": encode(r.metrics, type(r.metrics)),
                "selected_restart": r.selected_restart,
                "restarts": [encode(x, type(x)) for x in r.restarts],
            }
            for r in res.jobs
        },  # fmt: skip
        "failed": res.failed,
        "findings": res.findings.to_json(),
    }
    if res.has_posterior:
        out["posterior"] = {
            "settings": res.settings,
            "jobs": {
                job: {"model": encode(rec.model.mean, dict[str, Estimate]), "excluded": rec.excluded}
                for job, rec in res.posterior.items()
            },
        }
        out["verdicts"] = res.verdicts.to_json()
    return out


def run(folder: RunFolder) -> None:
    res = report.RunRecords.read(folder)
    atomic_write_json(folder.root / "metrics.json", metrics_summary(res))
    atomic_write_text(folder.root / "report.md", report.markdown(res))


def console(folder: RunFolder) -> str:
    return report.console(report.RunRecords.read(folder), folder.root / "report.md")
