"""The downstream tasks: what the fits cost in compression, robustness, outlier detection,
disentanglement and signal/noise, and on a user's data the encoder's self-consistency."""

from __future__ import annotations

from pyrofail.estimate import Estimate
from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number
from pyrofail.records.downstream import DataTasks, Disentanglement, JobTasks, LearnedNoise, ProcessComparison
from pyrofail.report.read import RunRecords

__all__ = ["section"]

_PROTOCOLS = {
    "disentanglement_lib": (
        "disentanglement_lib's protocol: codes in 20-bin histograms, mutual information by "
        "`mutual_info_score`; DCI from a gradient-boosted classifier (100 trees) per factor, "
        "informativeness its test accuracy"
    ),
    "continuous": (
        "the continuous variant: a gradient-boosted regressor per factor, informativeness its test R²"
    ),
}


def _better(d, lower_is_better: bool) -> str:
    """A paired difference (other − baseline) in words: better, worse, or a tie."""
    if d.verdict == "tie":
        return f"{est(d.estimate)} (tie)"
    word = "better" if (d.verdict == "less") == lower_is_better else "worse"
    return f"{est(d.estimate)} ({word})"


def _dis_cells(d: Disentanglement | None) -> list[str]:
    if d is None:
        return ["—", "—"]
    if not d.defined:
        return [f"— ({d.reason})", "—"]
    dci = "—" if d.disentanglement is None else " / ".join(
        est(e) for e in (d.disentanglement, d.completeness, d.informativeness)
    )  # fmt: skip
    return [est(d.mig), dci]


def _job_table(jobs: dict[str, JobTasks], truth) -> list[str]:
    eps = [r.eps for r in next(iter(jobs.values())).robustness]
    head = "| job | I(x; z) | " + " | ".join(f"KL at ε={e:g} (truth, same δ)" for e in eps)
    head += " | de-noising error at the largest ε (clean) | outlier AUROC | MIG | DCI: D / C / I |"
    lines = [head, "|---" * (6 + len(eps)) + "|"]
    for job, rec in sorted(jobs.items()):
        cells = [est(rec.total_mutual_information)]
        for r in rec.robustness:
            ideal = "" if r.truth_kl is None else f" ({number(sum(r.truth_kl) / len(r.truth_kl))})"
            cells.append(f"{est(r.mean)}{ideal}")
        last = rec.robustness[-1]
        cells.append(f"{est(last.denoise_error)} ({est(last.clean_error)})")
        cells.append(est(rec.auroc))
        cells += _dis_cells(rec.disentanglement)
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    truth_cells = ["—"] * (2 + len(eps)) + [est(truth.auroc), *_dis_cells(truth.disentanglement)]
    lines.append("| the truth's exact posterior | " + " | ".join(truth_cells) + " |")
    return lines


def _against(comparison: ProcessComparison) -> list[str]:
    if not comparison.against:
        return []
    lines = [f"Against the MFG-VAE ({comparison.baseline}), each fit minus it, paired:", ""]
    lower = {"auroc": False, "mig": False}
    for job, row in sorted(comparison.against.items()):
        who = "the truth's exact posterior" if job == "truth" else job
        parts = [f"{d.label}: {_better(d, lower.get(key, True))}" for key, d in row.items()]
        lines.append(f"- {who}: " + "; ".join(parts) + ".")
    return [*lines, ""]


def _noise_lines(process: str, noise: dict[str, LearnedNoise]) -> list[str]:
    """Signal and noise: each job's learned σ against the truth's (``--learn-noise``)."""
    if not noise:
        return []
    truth = next(iter(noise.values())).truth
    words = {
        "less": "below: noise learned as signal",
        "greater": "above: signal learned as noise",
        "tie": "tie",
    }
    lines = [
        f"Signal and noise: the learned σ against the truth's ({number(truth)}); the selected fit's, "
        "and the mean ± standard error over the restarts (a mean within two standard errors of the "
        "truth's is a tie).",
        "",
        "| job | learned σ | over restarts | learned / truth | against the truth |",
        "|---|---|---|---|---|",
    ]
    for job, rec in sorted(noise.items()):
        spread, side = "—", "—"
        if rec.over_restarts is not None and rec.over_restarts.stderr is not None:
            o = rec.over_restarts
            spread = f"{est(o)} ({len(rec.restart_values)})"
            side = words[Estimate(o.mean - truth, o.stderr).verdict()]
        lines.append(f"| {job} | {number(rec.selected)} | {spread} | {number(rec.ratio)} | {side} |")
    return [*lines, "", f"![learned noise of {process}](figures/noise-{process}.png)", ""]


def _data_lines(name: str, jobs: dict[str, DataTasks], comparison: ProcessComparison) -> list[str]:
    eps = next((rec.probe.eps for rec in jobs.values() if rec.probe is not None), [])
    lines = [
        f"### {name}",
        "",
        "Self-consistency: ‖z − m(μθ(z))‖ over prior draws z, m the encoder mean and μθ the decoder's "
        "mean (Cemgil et al. 2020; 0: the encoder inverts its own decoder). "
        + (
            "Accuracy: a linear classifier on the encoder means, on clean test points and under the "
            "encoder attack of radius ε (ℓ∞, in units of the data's mean per-feature sd)."
            if eps
            else ""
        ),
        "",
    ]
    head = "| job | I(x; z) | self-consistency |" + "".join(f" accuracy at ε={e:g} |" for e in eps)
    lines += [head, "|---" * (3 + len(eps)) + "|"]
    for job, rec in sorted(jobs.items()):
        cells = [est(rec.total_mutual_information), est(rec.consistency)]
        cells += [est(a) for a in rec.probe.accuracy] if rec.probe is not None else ["—"] * len(eps)
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    lines.append("")
    if comparison.against:
        lines += [f"Against the plain VAE ({comparison.baseline}), each fit minus it, paired:", ""]
        for job, row in sorted(comparison.against.items()):
            parts = [f"{d.label} {_better(d, key == 'consistency')}" for key, d in row.items()]
            lines.append(f"- {job}: " + "; ".join(parts) + ".")
        lines.append("")
    if eps:
        lines += [f"![representation under attack, {name}](figures/representation-{name}.png)", ""]
    return lines


def section(res: RunRecords) -> list[str]:
    d = res.downstream
    if d is None:
        return []
    protocols = {
        rec.disentanglement.protocol
        for jobs in d.jobs.values()
        for rec in jobs.values()
        if isinstance(rec, JobTasks) and rec.disentanglement is not None
    }
    lines = [
        "## Downstream tasks",
        "",
        "What the fits cost in the tasks VAEs are used for (Yacoby et al. 2020, Section 6), on the test "
        "points. Compression: the total I(x; z) of the encoder. Robustness: the worst ℓ∞ perturbation "
        "of radius ε (in units of each process's data scale, its mean per-feature sd; ten starts and a "
        "corner search) for the encoder, KL(q(z|x) ‖ q(z|x+δ)), and the truth's exact posterior shift "
        "under the same δ; de-noising: the reconstruction error under the attack. Outliers: AUROC of "
        "log p(x) between held-out points and off-manifold points of the truth. Disentanglement: MIG "
        "and DCI of the encoder means about the true factors on fresh draws of the truth, "
        + "; ".join(_PROTOCOLS.get(p, p) for p in sorted(protocols) or ["disentanglement_lib"])
        + "; '—' where a score needs more codes than the fit has. Against the baseline: each fit minus "
        "it, paired over the same points (DeLong's paired covariance for AUROC, the same bootstrap "
        "resamples for MIG); a difference within two standard errors is a tie.",
        "",
    ]
    for process, comparison in d.summary.processes.items():
        jobs = d.jobs[process]
        if comparison.data:
            lines += _data_lines(process, jobs, comparison)
            continue
        lines += [f"### {process}", "", *_job_table(jobs, d.truth[process]), "", *_against(comparison)]
        lines += [f"![robustness of {process}](figures/robustness-{process}.png)", ""]
        lines += _noise_lines(process, {j: r.noise for j, r in jobs.items() if r.noise is not None})
    return lines
