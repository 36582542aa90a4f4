"""Reference quality and posterior bias: each guide against the reference posteriors."""

from __future__ import annotations

from pyrofail.estimate import Estimate
from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number
from pyrofail.report.read import RunRecords

__all__ = ["bias_section", "quality_section"]


def quality_section(res: RunRecords) -> list[str]:
    if not res.has_posterior:
        return []
    rows = [(f"truth/{name}", rec.quality) for name, rec in res.hardness.items()]
    rows += [(job, rec.quality) for job, rec in res.posterior.items()]
    checks = list(dict.fromkeys(k for _, q in rows for k in q.summary if k != "any"))
    limits = {}
    for _, q in rows:
        limits.update(q.limits)
    table = ["| reference | method | points | failing the gate | " + " | ".join(checks) + " |"]
    table.append("|" + "---|" * (4 + len(checks)))
    for name, q in rows:
        cells = [f"{100 * q.summary[c]:.0f}%" if c in q.summary else "—" for c in checks]
        table.append(
            f"| {name} | {q.method} | {len(q.ok)} | {100 * q.summary['any']:.0f}% | "
            + " | ".join(cells)
            + " |"
        )
    return [
        "## Reference quality",
        "",
        "Every reference posterior is checked point by point before anything is measured against it "
        "(`pyrofail.analysis.reference.quality`): for NUTS, the within-mode R-hat, the effective "
        "sample size, the Pareto k̂ of the importance weights behind log p(x) and the mode masses, "
        "the posterior mass outside every mode found (missing) or in modes no chain's draws cover "
        "(unrepresented), divergent transitions and the standard error of log p(x); for the grid, "
        "the mass at the box's edge and in cells left coarse. Limits: "
        + ", ".join(f"{k} {v:g}" for k, v in limits.items())
        + ". A point whose reference fails is left out of the posterior-bias means and of the "
        "diagnosis, and counted there.",
        "",
        *table,
        "",
    ]


def _neg(e: Estimate | None) -> Estimate | None:
    return None if e is None else Estimate(-e.mean, e.stderr, e.n, e.exact, e.flag)


def _k_hat(bias) -> str:
    share = bias.mean.get("pareto_k_bad_share")
    return f"{number(bias.pareto_k_median, 2)} ({est(share)})"


def _points(res: RunRecords) -> str:
    counts = sorted({rec.n_points for rec in res.posterior.values()})
    return " or ".join(map(str, counts))


def bias_section(res: RunRecords) -> list[str]:
    if not res.has_posterior:
        return []
    s = res.settings
    lines = [
        "## Posterior bias",
        "",
        f"Each guide against the reference posterior of its own model at the analysis points — the "
        f"first {_points(res)} test points (`--reference-points`; `--reference {s['method']}`, "
        f"{s['draws']} draws per point) — means over the usable points ± standard errors. −ELBO and "
        "−log p(x): nats per point, lower is better; PMO gap: −ELBO − (−log p(x)), the reverse "
        "KL(q‖p); KL(p‖q): the forward KL, from the reference draws; best MFG KL*: the smallest "
        "reverse KL any mean-field Gaussian reaches per point (what a perfect, non-amortised "
        "mean-field encoder would pay; the PMO gap minus it is the price of amortisation and "
        "training); mode-mass error: total variation between the masses q and p put on the modes of "
        "p; energy distance: 2E‖Y−Z‖ − E‖Y−Y′‖ − E‖Z−Z′‖, zero only when q = p (Gneiting & Raftery "
        "2007); PSIS k̂: the Pareto shape of the importance weights p/q (Vehtari et al. 2024), its "
        "median and (the share of points above the threshold where importance sampling from the "
        "guide fails).",
        "",
        "| job | reference | points used (left out) | −ELBO | −log p(x) | PMO gap = KL(q‖p) | KL(p‖q) "
        "| best MFG KL* | mode-mass error | energy distance | PSIS k̂ median (share > threshold) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for job, rec in res.posterior.items():
        m = rec.model.mean
        best = rec.best_mean_field
        lines.append(
            f"| {job} | {rec.reference_method} | {rec.n_points - rec.excluded} ({rec.excluded}) "
            f"| {est(_neg(m.get('elbo')))} | {est(_neg(m.get('log_px')))} | {est(m.get('pmo_gap'))} "
            f"| {est(m.get('forward_kl'))} | {est(best.mean if best else None)} "
            f"| {est(m.get('mode_mass_error'))} | {est(m.get('energy_distance'))} | {_k_hat(rec.model)} |"
        )
    truth_rows = [(job, rec.truth) for job, rec in res.posterior.items() if rec.truth is not None]
    if truth_rows:
        lines += [
            "",
            "Against the ground truth's posterior p_GT(z|x) at the same points (jobs at the true K): the "
            "same quantities for the guide, and the posterior shift: the energy distance between the "
            "learned model's posterior p_θ(z|x) and the truth's (how far the latent space moved). The "
            "MLEO of each fit is in the table of fits, over all test points.",
            "",
            "| job | KL(q‖p_GT) | KL(p_GT‖q) | mode-mass error | energy distance | posterior shift |",
            "|---|---|---|---|---|---|",
        ]
        for job, t in truth_rows:
            m = t.mean
            lines.append(
                f"| {job} | {est(m.get('pmo_gap'))} | {est(m.get('forward_kl'))} "
                f"| {est(m.get('mode_mass_error'))} | {est(m.get('energy_distance'))} "
                f"| {est(m.get('posterior_shift'))} |"
            )
    return [*lines, ""]
