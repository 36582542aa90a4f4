"""The diagnosis in words: the one place that writes the sentences of a verdict, for the report,
the command line and :meth:`pyrofail.records.verdict.Verdict.sentences`."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number, percent
from pyrofail.records.verdict import Verdict, Verdicts

__all__ = ["GUIDELINES", "FAILURE_WORDS", "failure_map_section", "section", "sentences", "summary"]

GUIDELINES = {
    # Yacoby, Pan & Doshi-Velez (2020), guidelines for practitioners
    "flexible": (
        "If the data are clustered or lie on a manifold in a distorted Euclidean space (as the "
        "Figure-8 does), use a more flexible variational family, and regularise the decoder's "
        "weights so that it does not over-fit."
    ),
    "check": (
        "If the data's topology cannot be investigated, check whether a more flexible variational "
        "family (or IWAE) gives better results."
    ),
    "sigma": (
        "Set the noise scale σ by domain expertise or by unbiased hyper-parameter selection, not "
        "by the ELBO, which prefers a smaller σ (and a larger K) than the truth."
    ),
    "latent": (
        "Do not read the latent space of an MFG-VAE as the data's latent factors: p(x) fits, yet "
        "z is not the ground truth's, so compression, disentanglement and inference about z "
        "inherit the error; check whether a more flexible variational family (or IWAE) changes "
        "the latent space."
    ),
}

FAILURE_WORDS = {
    "data distribution": "a data-distribution failure",
    "latent space": "a latent-space failure",
    "none": "no failure",
    "undetermined": "undetermined",
    "not diagnosed": "not diagnosed",
}

_NOT_DIAGNOSED = {
    "no-mfg-job": "the diagnosis needs a job with the mean_field guide and the elbo objective at K = {k}",
    "no-usable-points": "no analysis point passed the reference quality gate",
    "no-references": "there are no reference posteriors at K = {k}",
}

_FLAGS = {
    "truth-started-worse": (
        "{job} may be under-trained: its restarts started at the ground truth ended worse than its "
        "random ones (best validation objective {truth_started:.3f} against {random:.3f} nats)"
    ),
    "still-improving": (
        "{job} may be under-trained: the selected restart's validation objective was still rising "
        "at the end of training (by {gain:.3f} nats from step {from_step} to {to_step})"
    ),
    "comparator-far": (
        "the comparator {job}'s own p(x) is {mleo:.3f} nats (MLEO) from the truth's, more than the "
        "margin: the fits may be far from converged, which weakens the comparison of p(x)"
    ),
}


def _ref(v: Verdict) -> str:
    return "the ground truth" if v.has_truth else "the best-fitting model"


def flag_text(flag) -> str:
    return _FLAGS[flag.kind].format(job=flag.job, **flag.numbers)


def _cx1(v: Verdict) -> str:
    ev, ref = v.evidence, _ref(v)
    cut = number(ev.hard_kl)
    hard = (
        f"{ref}'s posterior is hard for a mean-field Gaussian (the best one is more than {cut} nats "
        "from it; −log 0.9 is what a Gaussian pays that fits one of two modes exactly and misses "
        f"a tenth of the mass) at {percent(ev.truth_share_hard.mean)} ± "
        f"{percent(ev.truth_share_hard.stderr or 0)} of the {ev.n_points} analysis points; on "
        f"average the best mean-field Gaussian is {est(ev.truth_kl)} nats from it."
    )
    if not ev.cx1_reachable:
        return (
            f"Cx1 (= Cz1) cannot be told: {hard} But at {ev.n_points} points that cost is known only "
            f"to ± {number(ev.cost_error)} nats, more than what even every point being hard would cost."
        )
    head = "holds" if v.conditions.get("Cx1") else "does not hold"
    return (
        f"Cx1 (= Cz1) {head}: {hard} Cx1 needs {percent(ev.cx1_share)}: the share whose cost to any "
        f"mean-field encoder is two standard errors above zero (2 × {number(ev.cost_error)} nats, the "
        "sampling error of that cost over the points)."
    )


def _simpler(v: Verdict) -> str:
    ev, ref = v.evidence, _ref(v)
    mf = ev.mean_field
    if ev.simpler.mean > ev.margin_nats and ev.simpler.verdict() == "greater":
        return (
            f"The MFG-VAE ({mf.job}) has learned simpler posteriors than {ref}'s: the best mean-field "
            f"Gaussian is {est(mf.kl_star)} nats from its posteriors against {est(ev.truth_kl)} for "
            f"{ref} (paired difference {est(ev.simpler)}; hard at {percent(mf.share_hard.mean)} of the "
            "points)."
        )
    return (
        f"The MFG-VAE ({mf.job}) has not simplified its posteriors: the best mean-field Gaussian is "
        f"{est(mf.kl_star)} nats from them against {est(ev.truth_kl)} for {ref} (paired difference "
        f"{est(ev.simpler)}, not above the {number(ev.margin_nats, 2)}-nat margin by two standard errors)."
    )


def _px(v: Verdict) -> str:
    ev, ref = v.evidence, _ref(v)
    mf, rich, px = ev.mean_field, ev.richer, ev.px_cost
    base = f"the {rich.job} model's" if rich is not None else f"{ref}'s"
    values = f"MLEO {est(mf.mleo)}" + (f" against {est(rich.mleo)} nats" if rich is not None else " nats")
    diff = f"paired difference over the {ev.n_test} test points {est(px)}"
    margin = number(ev.margin_nats, 2)
    if px.mean > ev.margin_nats and px.verdict() == "greater":
        return f"Its p(x) is worse than {base}: {values} ({diff})."
    if px.stderr is not None and px.mean + 2 * px.stderr <= ev.margin_nats:
        return (
            f"Its p(x) is as good as {base}: {values} ({diff}, within the {margin}-nat margin by two "
            "standard errors)."
        )
    return (
        f"Its p(x) cannot be told from {base}: {values} ({diff}: neither above the {margin}-nat margin "
        "nor below it by two standard errors)."
    )


def _conclusion(v: Verdict) -> str:
    ev, ref = v.evidence, _ref(v)
    if v.reason == "too-few-rows":
        return (
            f"Verdict: undetermined: {ev.n_test} test rows, about {ev.rows_needed} needed to detect a "
            f"{number(ev.margin_nats, 2)}-nat difference in p(x) (paired, two-sided 5%, power 80%, at "
            "the spread these rows show); more rows, or cross-fitting (--folds), would decide it."
        )
    if v.reason == "collapsed":
        return (
            f"Verdict: undetermined: the best-fitting model at K = {v.k}, {v.reference}, ignores its "
            "latent (its encoder's mutual information is zero within two standard errors): every "
            "posterior of it is the prior, so it cannot stand in for the truth's posteriors. Refit "
            "with more restarts or steps, a smaller K, or σ fixed below the data's spread (--noise-scale)."
        )
    if v.reason == "mfg-is-best":
        return (
            "Verdict: no failure to detect: the MFG-VAE's own model fits p(x) best of the fits at "
            f"K = {v.k}, so it stands in for the truth; it has paid nothing in p(x) against the others, "
            "and there is no trade to detect."
        )
    if v.failure == "none":
        return (
            f"Verdict: no failure is predicted; {ref}'s posteriors are close enough to mean-field "
            f"Gaussians that the ELBO has no measurable reason to move away from {ref}."
        )
    if v.failure == "data distribution":
        return (
            "Verdict: a data-distribution failure (Cx1 and Cx2): no decoder with simpler posteriors "
            "fits p(x) well, so the MFG-VAE paid for simpler posteriors with a wrong p(x)."
        )
    if v.failure == "latent space":
        shift = ev.mean_field.posterior_shift
        extra = (
            "" if shift is None else f"; its posteriors are at energy distance {est(shift)} from the truth's"
        )
        return (
            "Verdict: a latent-space failure (Cz1 and Cz2): a decoder with simpler posteriors fits "
            f"p(x) as well, and the MFG-VAE learned it: p(x) is right, the latent space is not{extra}."
        )
    if v.reason == "px-unclear":
        return (
            "Verdict: undetermined: Cx1 holds and the MFG-VAE has simpler posteriors, but whether it "
            "paid with p(x) (Cx2) or not (Cz2) is not clear at this number of test points."
        )
    return (
        "Verdict: undetermined: Cx1 holds, but the MFG-VAE has not traded posterior accuracy for p(x) "
        f"in this run (its guide still pays a PMO gap of {est(ev.mean_field.pmo_gap)} nats), so the run "
        "cannot tell Cx2 from Cz2; the fit is probably not at the ELBO's optimum (the paper trains 10 "
        "restarts, half at the ground truth, to convergence)."
    )


def sentences(v: Verdict) -> list[str]:
    """The verdict ``v`` in sentences, each with the numbers it rests on."""
    if v.failure == "not diagnosed":
        return [f"Not diagnosed: {_NOT_DIAGNOSED[v.reason].format(k=v.k)}."]
    ev = v.evidence
    out = []
    if not v.has_truth:
        out.append(
            f"There is no ground truth: the best-fitting model at K = {v.k}, {v.reference} (the highest "
            "test log p(x)), stands in for it; MLEO here is its log p(x) minus the fit's, per test point."
        )
    if v.excluded_points:
        out.append(
            f"{v.excluded_points} of the {ev.n_points + v.excluded_points} analysis points are left out: "
            "a reference posterior there failed its quality gate (the reference-quality table says which)."
        )
    out += [_cx1(v), _simpler(v), _px(v)]
    out += [f"Warning: {flag_text(f)}." for f in v.flags]
    out.append(_conclusion(v))
    mf = ev.mean_field
    if v.conditions.get("Cx1") and mf.pmo_gap_hard is not None and mf.pmo_gap_easy is not None:
        share = mf.pmo_share_hard
        carried = f", {percent(share)} of its total," if share is not None else ""
        out.append(
            f"The MFG guide's PMO gap is {number(mf.pmo_gap_hard)} nats on the "
            f"{percent(ev.truth_share_hard.mean)} of points with hard posteriors under {_ref(v)}{carried} "
            f"and {number(mf.pmo_gap_easy)} nats on the others."
        )
    out += [f"Guideline (Yacoby et al. 2020): {GUIDELINES[g]}" for g in v.guidelines]
    return out


def _headline(name: str, v: Verdict) -> str:
    """One line: the verdict and the one number behind it."""
    words = FAILURE_WORDS[v.failure]
    if v.evidence is None:
        return f"**{name}: {words}** ({_NOT_DIAGNOSED[v.reason].format(k=v.k)})."
    ev = v.evidence
    against = ev.richer.job if ev.richer is not None else _ref(v)
    px = f"the MFG-VAE's p(x) is {est(ev.px_cost)} nats per point worse than {against}'s"
    if v.failure == "latent space":
        px = (
            f"the MFG-VAE keeps p(x) ({est(ev.px_cost)} nats per point against {against}) with "
            "simpler posteriors"
        )
    elif v.reason == "too-few-rows":
        px = (
            f"{ev.n_test} test rows, about {ev.rows_needed} needed; the p(x) difference is "
            f"{est(ev.px_cost)} nats"
        )
    elif v.failure == "none" and v.reason != "mfg-is-best":
        px = f"{_ref(v)}'s posteriors are hard at only {percent(ev.truth_share_hard.mean)} of the points"
    elif v.reason == "mfg-is-best":
        px = "the MFG-VAE fits p(x) best itself"
    elif v.reason == "collapsed":
        px = f"the best-fitting model at K = {v.k} ignores its latent (posterior collapse)"
    return f"**{name}: {words}** — {px}."


def summary(verdicts: Verdicts | None) -> list[str]:
    """The report's first lines: each verdict, the number behind it, and what to do."""
    if verdicts is None or not verdicts.verdicts:
        return []
    lines = []
    for name, v in verdicts.verdicts.items():
        lines.append(f"- {_headline(name, v)}")
        for flag in v.flags:
            lines.append(f"  Warning: {flag_text(flag)}.")
        for g in v.guidelines[:1]:
            lines.append(f"  What to do: {GUIDELINES[g]}")
    return lines


def section(verdicts: Verdicts | None) -> list[str]:
    """The diagnosis of every process: the sentences and the guidelines that apply."""
    if verdicts is None or not verdicts.verdicts:
        return []
    lines = [
        "## Diagnosis",
        "",
        "The failure conditions of Yacoby, Pan & Doshi-Velez (2020), decided from the numbers of "
        "this report (`pyrofail.analysis.diagnose`): KL* and the PMO gap at the analysis points whose "
        "references pass the quality gate, the MLEO and its paired difference over every test point.",
        "",
    ]
    for name, v in verdicts.verdicts.items():
        lines += [f"### {name}: {FAILURE_WORDS[v.failure]}", ""]
        lines += [f"- {s}" for s in sentences(v)]
        lines.append("")
    return lines


def failure_map_section(verdicts: Verdicts | None) -> list[str]:
    if verdicts is None or not verdicts.failure_map:
        return []
    lines = [
        "## The failure map",
        "",
        "Each process at every noise scale σ of its ground truth: the MLEO of the MFG-VAE and of the "
        "comparator, their paired difference (each ± its standard error over the test points), the "
        "share of analysis points whose true posterior is hard for a mean-field Gaussian against the "
        "share Cx1 asks for, the MFG guide's PMO gap, and the verdict.",
        "",
    ]
    for process, rows in verdicts.failure_map.items():
        lines += [
            f"### {process}",
            "",
            "| σ | MLEO MFG-VAE | MLEO comparator | difference | hard (Cx1 asks) | PMO gap | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.sigma:g} | {est(r.mleo_mfg)} | {est(r.mleo_other)} | {est(r.px_cost)} "
                f"| {percent(r.share_hard.mean)} ({percent(r.cx1_share)}) | {est(r.pmo_gap)} | {r.failure} |"
            )
        lines += ["", f"![failure map of {process}](figures/failure-map-{process}.png)", ""]
    return lines
