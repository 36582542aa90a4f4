"""Which guide fits best, and which latent dimension each criterion chooses."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.records.findings import Findings

__all__ = ["choosing_k_section", "guides_section"]


def guides_section(findings: Findings) -> list[str]:
    lines = []
    for g in findings.guides:
        wins = [f"{d.label}'s by {est(d.estimate)} nats" for d in g.others if d.verdict != "tie"]
        ties = [f"{d.label}'s (difference {est(d.estimate)} nats)" for d in g.others if d.verdict == "tie"]
        text = f"- {g.process} K={g.k} {g.objective}: {g.best}'s test log p(x) ({est(g.best_log_px)})"
        if wins:
            text += " is higher than " + " and ".join(wins)
        if ties:
            text += (";" if wins else "") + " ties with " + " and ".join(ties)
        lines.append(text + ".")
    if not lines:
        return []
    return [
        "## Guides compared",
        "",
        "Highest test log p(x) per process, K and objective; each difference is paired over the same "
        "test points (a difference within two standard errors is a tie).",
        "",
        *lines,
        "",
    ]


def choosing_k_section(findings: Findings) -> list[str]:
    rows = []
    for c in findings.choosing_k:
        values = " / ".join(f"{est(e)}, {est(p)}" for e, p in zip(c.neg_elbo, c.neg_log_px))
        picks = []
        for pick, ties in ((c.elbo_pick, c.elbo_ties), (c.px_pick, c.px_ties)):
            tie = f" (ties: K = {', '.join(map(str, ties))})" if ties else ""
            picks.append(f"{pick}{tie}")
        ks = "/".join(map(str, c.ks))
        rows.append(
            f"| {c.process} | {c.guide} | {c.objective} | {ks} | {values} | {picks[0]} | {picks[1]} |"
        )
    if not rows:
        return []
    return [
        "## Which latent dimension each criterion chooses",
        "",
        "The test −ELBO and −log p(x) at each K (in the order of the K column, ± standard errors), and "
        "the K with the lowest of each; a K whose paired difference from it is within two standard "
        "errors ties with it. The ELBO tends to prefer more latent dimensions than p(x) needs "
        "(Yacoby et al. 2020, Table 1).",
        "",
        "| process | guide | objective | K | −ELBO, −log p(x) at each K | ELBO picks K | log p(x) picks K |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
