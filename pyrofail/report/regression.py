"""Bayesian neural networks with latent input noise (the ``regression`` stage)."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.report.read import RunRecords

__all__ = ["section"]


def section(res: RunRecords) -> list[str]:
    if not res.regression:
        return []
    columns = [
        ("test_ll", "test log-lik."),
        ("paired_diff", "Δ test log-lik. (paired)"),
        ("coverage90", "90% coverage"),
        ("rmse", "RMSE"),
        ("gap", "train − test log-lik."),
        ("hsic", "HSIC(x, z)"),
        ("r2_z", "R²(E[z] from x)"),
    ]
    lines = [
        "## Bayesian neural networks with latent input noise",
        "",
        "y = f_W(x, z) + ε with a prior on the weights W and a latent input z per point "
        "(Depeweg et al. 2018); explanatory power can move between W and z while the training "
        "data are fit equally well (Yacoby, Pan & Doshi-Velez 2022). Test log-likelihood of the "
        "posterior predictive with z drawn from its prior; Δ: each method minus the first, paired "
        "over test points; the train − test gap uses the inferred z of the training points; "
        "HSIC and R² measure how much the inferred z depends on x, which the model says it does "
        "not. `noise_constrained` is this project's reading of the paper's mitigation: VI with a "
        "penalty λ · HSIC(x, z), λ chosen on validation data.",
        "",
    ]
    words = {"greater": "higher", "less": "lower", "tie": "a tie, inside two standard errors"}
    for process, record in res.regression.items():
        lines += [
            f"### {process}",
            "",
            "| method | seconds | λ | " + " | ".join(label for _, label in columns) + " |",
            "|---" * (3 + len(columns)) + "|",
        ]
        for row in record.rows:
            cells = [est(row.estimates.get(key)) for key, _ in columns]
            lam = "—" if row.lam is None else f"{row.lam:g}"
            seconds = "—" if row.seconds is None else f"{row.seconds:.0f}"
            lines.append(f"| {row.method} | {seconds} | {lam} | " + " | ".join(cells) + " |")
        lines.append("")
        first = next((r for r in record.rows if r.method != "truth"), None)
        for row in record.rows:
            diff = row.estimates.get("paired_diff")
            if row is first or row.method == "truth" or diff is None:
                continue
            lines.append(
                f"- {row.method} against {first.method}: test log-likelihood {est(diff)} "
                f"({words[diff.verdict()]})."
            )
        if record.figure:
            lines += ["", f"![predictive bands of {process}]({record.figure})"]
        lines.append("")
    return lines
