"""The check of a user's own Pyro program (``pf.check``, ``--program``) in words."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import percent
from pyrofail.records.program import ProgramCheck

__all__ = ["header", "section", "summary"]

VERDICTS = {
    "ok": "the guide's posterior-matching gap is within the margin: nothing to fix",
    "family": "the posteriors are far from any mean-field Gaussian: a richer variational family would gain",
    "amortization": "the encoder is worse than the best mean-field Gaussian of each point: train it "
    "longer or wider, or refine it per point",
    "family+amortization": "both: a richer family and a better encoder would each gain",
    "undetermined": "the gap is large, but neither a richer family nor a better encoder is clearly why",
}
_READING = {"yes": "yes", "no": "no", "unclear": "unclear (inside two standard errors of the margin)"}


def header(check: ProgramCheck) -> list[str]:
    what = check.program or "a Pyro model and guide"
    return [
        f"# pyrofail report: {what}",
        "",
        f"The check of a fitted model and guide against the model's own posterior at {check.n_points} "
        f"test points ({check.reference} reference, K = {check.latent_dim}, guide: {check.guide_family}, "
        f"seed {check.seed}).",
        "",
    ]


def summary(check: ProgramCheck) -> list[str]:
    return [
        f"- **{check.verdict}**: {VERDICTS[check.verdict]} — PMO gap {est(check.pmo_gap)} nats per "
        f"point, of which {est(check.kl_star)} no mean-field Gaussian avoids (KL*) and "
        f"{est(check.amortization_gap)} the encoder loses against the best one (amortisation).",
    ]


def section(check: ProgramCheck) -> list[str]:
    return [
        "## Your model and guide",
        "",
        "Means over the test points whose reference passed its quality gate, ± standard errors; nats "
        "per point. PMO gap: log p_θ(x) − ELBO(x) = KL(q(z|x) ‖ p_θ(z|x)); KL*: the smallest reverse KL "
        "any mean-field Gaussian reaches from p_θ(z|x) (Yacoby et al. 2020); amortisation gap: PMO gap "
        "− KL* (Cremer, Li & Duvenaud 2018); hard: KL* above −log 0.9, what a Gaussian pays that fits one "
        "of two modes and misses a tenth of the mass.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| points used (of {check.n_points}) | {check.usable} |",
        f"| −ELBO | {est(check.neg_elbo)} |",
        f"| −log p_θ(x) ({check.reference}) | {est(check.neg_log_px)} |",
        f"| PMO gap | {est(check.pmo_gap)} |",
        f"| KL* (best mean-field Gaussian) | {est(check.kl_star)} |",
        f"| amortisation gap | {est(check.amortization_gap)} |",
        f"| share of hard points (Cx1 asks {percent(check.hard_share_needed)}) | {est(check.share_hard)} |",
        f"| forward KL(p‖q) | {est(check.forward_kl)} |",
        f"| mode-mass error | {est(check.mode_mass_error)} |",
        f"| share of points with PSIS k̂ above its threshold | {percent(check.pareto_k_bad_share)} |",
        "",
        f"- The gap is {'large' if check.gap_large else 'within the 0.05-nat margin'}; the posteriors "
        f"are {'hard' if check.hard else 'not hard'} for a mean-field Gaussian at a measurable share of "
        "the points.",
        f"- Would a richer family gain (KL* above the margin)? {_READING[check.richer_family]}.",
        "- Would a better encoder gain (the amortisation gap above the margin)? "
        f"{_READING[check.amortization]}.",
        "",
    ]
