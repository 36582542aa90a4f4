"""Likelihood before inference beside joint training, and the semi-supervised M2 fits."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number
from pyrofail.report.read import RunRecords

__all__ = ["libi_section", "m2_section"]


def libi_section(res: RunRecords) -> list[str]:
    if not res.findings.libi:
        return []
    lines = [
        "## Likelihood before inference (LiBI)",
        "",
        "LiBI (Yacoby, Pan & Doshi-Velez 2019) fits the decoder first by maximum likelihood — the "
        "exact log p(x) by quadrature, with a penalty on the aggregate posterior's KL from p(z) "
        "(this project's reading of \"an inference model that respects the modelling "
        'assumptions") — then the guide to the fixed decoder by the ELBO. Beside it, the same '
        "process and K trained jointly. MLEO: KL(p_GT(x) ‖ p_θ(x)) over the test points; Δ MLEO: "
        "LiBI minus the joint fit, paired over the test points (a difference within two standard "
        "errors is a tie); aggregate KL: KL of the model's aggregate exact posterior from p(z) on "
        "the test points, its finite-sample bias removed (jackknife, and the remainder measured on "
        "the model's own samples).",
        "",
    ]
    words = {"greater": "LiBI worse", "less": "LiBI better", "tie": "tie"}
    for comparison in res.findings.libi:
        lines += [
            f"### {comparison.libi}",
            "",
            "| job | MLEO | Δ MLEO (LiBI − this) | PMO gap | aggregate KL | avg I(x; z_i) |",
            "|---|---|---|---|---|---|",
        ]
        for row in comparison.rows:
            delta = "—" if row.delta is None else f"{est(row.delta.estimate)} ({words[row.delta.verdict]})"
            lines.append(
                f"| {row.job} | {est(row.mleo)} | {delta} | {est(row.pmo_gap)} | {est(row.aggregate_kl)} "
                f"| {est(row.avg_mutual_information)} |"
            )
        lines.append("")
    return lines


def m2_section(res: RunRecords) -> list[str]:
    jobs = [r for r in res.jobs if r.metrics.semi_supervised is not None]
    if not jobs:
        return []
    lines = [
        "## Semi-supervised (M2)",
        "",
        "The M2 model of Kingma et al. (2014) with q(y|x) q(z|x,y), trained on the labelled share of "
        "the points (`--labelled-fraction`). Separation: the mean distance between the two learned "
        "class curves f(z, 0) and f(z, 1) over z ~ p(z), as a share of the truth's (near 0: the "
        "curves collapsed onto each other). Counterfactual error: the distance between the learned "
        "and the true counterfactual of each test point (its point had it been of the other class) — "
        "(model): z inferred by the learned model's exact posterior and the truth's counterfactual "
        "at its posterior median; (guide): z inferred by the encoder, the paper's definition. MLEO "
        "of p(x) and of each class's p(x|y), exact by quadrature; accuracy of q(y|x) against the "
        "truth's own (Bayes) accuracy.",
        "",
        "| job | separation / truth | counterfactual error (model) | (guide) | MLEO p(x) "
        "| MLEO p(x \\| y=0) / p(x \\| y=1) | accuracy (Bayes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in jobs:
        m = r.metrics.semi_supervised
        reads_y = r.config.guide_options.get("label_in_encoder", True)
        encoder = "" if reads_y else " (q(z \\| x): the encoder does not read y)"  # \\|: a pipe in a cell
        lines.append(
            f"| {r.job}{encoder} | {number(m.separation_ratio, 2)} | {est(m.counterfactual_error_model)} "
            f"| {est(m.counterfactual_error_guide)} | {est(m.mleo)} | {number(m.mleo_class0)} / "
            f"{number(m.mleo_class1)} | {est(m.accuracy)} ({number(m.bayes_accuracy)}) |"
        )
    lines.append("")
    words = {"greater": "the MFG M2's is larger", "less": "the MFG M2's is smaller", "tie": "a tie"}
    variants = (
        (res.findings.m2_counterfactual_guide, "z inferred by the encoder, the paper's definition"),
        (res.findings.m2_counterfactual, "z inferred by the learned model's exact posterior"),
    )
    for diffs, variant in variants:
        if not diffs:
            continue
        lines += [
            f"Counterfactual error ({variant}) against the MFG M2 ({res.findings.m2_baseline}), paired over "
            "the test points:",
            "",
        ]
        for d in diffs:
            lines.append(f"- {d.label}: MFG M2 minus it {est(d.estimate)} ({words[d.verdict]}).")
        lines.append("")
    return lines
