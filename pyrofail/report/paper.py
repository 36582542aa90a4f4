"""Table 1 of Yacoby et al. (2020) beside ours, and the orderings it is about."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number
from pyrofail.records.findings import Findings, Ordering

__all__ = ["claim_text", "orderings_lines", "orderings_section", "table1_section", "table1_table"]

_OBJECTIVES = (("elbo", "VAE"), ("iwae", "IWAE"))


def claim_text(o: Ordering) -> str:
    label = dict(_OBJECTIVES).get(o.objective, o.objective)
    return {
        "elbo-prefers-larger-k": (
            f"{o.process}: the MFG-VAE's test −ELBO is lower at K = 2 and 3 than at the true K = 1"
        ),
        "iwae-flat-in-k": (
            f"{o.process}: IWAE's test bound at K = 1 is within noise ({number(o.margin, 2)} nats) of, or "
            "better than, its K = 2 and 3"
        ),
        "information-falls-with-k": f"{o.process} {label}: avg_i I(x; z_i) falls with K",
        "iwae-px-higher": (
            f"{o.process}: the IWAE-trained K = 1 model has a higher test log p(x) than the VAE's"
        ),
    }[o.claim]


def orderings_lines(findings: Findings) -> list[str]:
    marks = {"yes": "yes", "no": "**no**", "tie": "tie (inside two standard errors)"}
    return [
        f"- {claim_text(o)}: {marks[o.outcome]} ("
        + "; ".join(f"{d.label} {est(d.estimate)}" for d in o.differences)
        + ")"
        for o in findings.orderings
    ]


def orderings_section(findings: Findings) -> list[str]:
    lines = orderings_lines(findings)
    if not lines:
        return []
    return [
        "## Orderings of Table 1",
        "",
        "Each ordering is a paired difference over the same test points, ± its standard error; "
        '"yes" when every difference supports it beyond two standard errors.',
        "",
        *lines,
        "",
    ]


def table1_table(findings: Findings) -> str | None:
    cells = {(c.process, c.k, c.objective, c.metric): c for c in findings.table1}
    if not cells:
        return None
    cols = sorted({(c.process, c.k) for c in cells.values()}, key=lambda pk: (pk[0] != "figure8", pk[1]))
    head = "| | " + " | ".join(f"{p} K={k}{' (GT)' if k == 1 else ''}" for p, k in cols) + " |\n"
    head += "|---|" + "---|" * len(cols) + "\n"
    rows = []
    for obj, label in _OBJECTIVES:
        bound = "test −ELBO" if obj == "elbo" else "test −IWAE bound"
        for metric, name in (("neg_bound", bound), ("mi", "avg_i I(x; z_i)")):
            row = []
            for p, k in cols:
                c = cells.get((p, k, obj, metric))
                if c is None:
                    row.append("—")
                    continue
                mark = "" if c.inside is None else (" ✓" if c.inside else " ✗")
                mark += " (calibrated)" if c.calibrated else ""
                row.append(f"{est(c.value)} ({c.paper[0]:.3f} ± {c.paper[1]:.3f}){mark}")
            rows.append(f"| {label} {name} | " + " | ".join(row) + " |")
        learned = [cells.get((p, k, obj, "neg_bound")) for p, k in cols]
        if any(c is not None and c.noise_learned for c in learned):
            # the paper's caption: the ELBO prefers more latent dimensions *and smaller noise*
            row = [
                "—" if c is None or c.noise_scale is None
                else number(c.noise_scale) + ("" if c.noise_learned else " (fixed)")
                for c in learned
            ]  # fmt: skip
            rows.append(f"| {label} σ | " + " | ".join(row) + " |")
    return head + "\n".join(rows) + "\n"


def _counts(findings: Findings) -> str:
    parts = []
    for calibrated, what in ((False, "independent"), (True, "calibrated")):
        for metric, name in (("neg_bound", "test bounds"), ("mi", "avg_i I(x; z_i) cells")):
            cells = [
                c
                for c in findings.table1
                if c.calibrated == calibrated and c.metric == metric and c.inside is not None
            ]
            if cells:
                parts.append(f"{sum(c.inside for c in cells)} of {len(cells)} {what} {name}")
    return "; ".join(parts)


def table1_section(findings: Findings) -> list[str]:
    table = table1_table(findings)
    if table is None:
        return []
    return [
        "## Table 1 of Yacoby et al. (2020): ours (paper)",
        "",
        "Ours: mean over the test points ± standard error; the paper's mean ± sd over its restarts "
        "in brackets. Our numbers come from our own data sets (the paper's are not public) and the "
        "paper does not state the constants of its likelihood: the processes' σ and scale were "
        "calibrated so that the truth's entropy and information match the paper's cells at the true "
        'K (marked "calibrated": agreement there is by construction, docs/results/calibration.md); the other '
        "cells are independent checks. ✓: inside the paper's mean ± 2 sd (✗: outside).",
        "",
        table,
        f"Inside the paper's mean ± 2 sd: {_counts(findings)}.",
        "",
    ]
