"""The run's report: renderers that turn the run folder's records into ``report.md``.

The report decides nothing: every verdict, ordering and comparison was decided by a stage and
written as a record (:mod:`pyrofail.records`); each module here renders one concern, and this
package imports only the records and the number formatter. :data:`SECTIONS` lists the sections
in the order they appear — the summary first (the verdict, the one number behind it, what to
do), then the evidence. A new section is one function ``(RunRecords) -> list[str]`` here.
"""

from __future__ import annotations

from pathlib import Path

from pyrofail.report import (
    choices,
    diagnosis,
    downstream,
    fits,
    paper,
    posterior,
    procedures,
    program,
    regression,
)
from pyrofail.report.read import RunRecords

__all__ = ["SECTIONS", "RunRecords", "console", "markdown", "summary_section"]


def summary_section(res: RunRecords) -> list[str]:
    """The first lines: each verdict with the number behind it and what to do; without a
    verdict, why not, the fit with the highest test log p(x), and the orderings of Table 1."""
    if res.program is not None:
        return ["## Summary", "", *program.summary(res.program), ""]
    if not res.jobs:
        return ["## Summary", "", "No job finished.", ""]
    lines = diagnosis.summary(res.verdicts)
    if not lines:
        why = "it needs reference posteriors: drop `--no-reference`" if res.settings is None else (
            "no process has the jobs it needs (the mean-field guide with the ELBO at the true K)"
        )  # fmt: skip
        lines.append(f"- No diagnosis in this run: {why}.")
        best = min(
            (r for r in res.jobs if r.metrics.test_neg_log_px is not None),
            key=lambda r: r.metrics.test_neg_log_px.mean,
            default=None,
        )
        if best is not None:
            lines.append(
                f"- The highest test log p(x): {best.job}, −log p(x) = "
                f"{fits.est(best.metrics.test_neg_log_px)} nats per point."
            )
    return ["## Summary", "", *lines, *paper.orderings_lines(res.findings), ""]


def figures_section(res: RunRecords) -> list[str]:
    lines = ["## Figures", ""]
    captions = {
        "posterior": (
            "The posteriors at four analysis points (panels A–D, chosen from the hardest to the easiest "
            "for a mean-field Gaussian by the truth's KL*): the truth's p_GT(z|x) filled in grey, each "
            "fit's guide q(z|x) solid and its own model's posterior p_θ(z|x) dashed, in the fit's colour."
        ),
        "pmo-gap": (
            "The PMO gap KL(q(z|x) ‖ p_θ(z|x)) of each fit at every test point, in data space, on one "
            "colour scale shared by the panels; the white curve is the truth's mean f(z) and the letters "
            "A–D mark the points of the posterior figure."
        ),
        "failure-map": "The failure map over the truth's σ (see its section).",
    }
    for f in res.figures:
        stem = Path(f).stem
        kind = next((k for k in captions if stem.startswith(k)), None)
        lines += [f"![{stem}]({f})", "", captions.get(kind, ""), ""]
    for r in res.jobs:
        for f in r.figures:
            # a cross-fitted fit shows its first fold's figures, named from the run folder
            path = f if f.startswith("jobs/") else f"jobs/{r.job}/{f}"
            fold = " (first fold)" if f.startswith("jobs/") else ""
            lines.append(f"![{r.job} {Path(f).stem}{fold}]({path})")
    return [*lines, ""] if len(lines) > 2 else []


def header(res: RunRecords) -> list[str]:
    return program.header(res.program) if res.program is not None else fits.header(res)


SECTIONS = (
    header,
    summary_section,
    lambda res: [] if res.program is None else program.section(res.program),
    lambda res: fits.data_section(res) if res.program is None else [],
    lambda res: fits.results_section(res) if res.jobs or res.failed else [],
    lambda res: diagnosis.section(res.verdicts),
    lambda res: paper.table1_section(res.findings),
    lambda res: choices.guides_section(res.findings),
    lambda res: choices.choosing_k_section(res.findings),
    posterior.bias_section,
    posterior.quality_section,
    lambda res: diagnosis.failure_map_section(res.verdicts),
    procedures.libi_section,
    procedures.m2_section,
    downstream.section,
    regression.section,
    fits.training_section,
    figures_section,
)


def markdown(res: RunRecords) -> str:
    return "\n".join(line for section in SECTIONS for line in section(res))


def console(res: RunRecords, path: Path) -> str:
    """What the command line prints at the end of a run: the summary, the fits, the path."""
    parts = summary_section(res) + ([fits.results_table(res)] if res.jobs else []) + [f"report: {path}"]
    return "\n".join(parts)
