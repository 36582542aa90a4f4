"""Stage ``report``: ``metrics.json`` and ``report.md``, the one author of the report's prose.

Every section of ``report.md`` is a function here, listed in :data:`SECTIONS` in the order it
appears; a new stage adds its section by adding one function to the list. ``metrics.json``
gathers every stage's summary numbers (per-point values stay in the job folders).

Reads: ``config.json``, ``jobs/<job>/{metrics.json, failed.json, posterior.json}``,
``truth/<model>/``, ``diagnosis.json``, ``figures/``.
Writes: ``metrics.json``, ``report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pyrofail.numbers import number, with_error
from pyrofail.presets import PAPER_TABLE1
from pyrofail.runs import atomic_write_json, atomic_write_text, read_json
from pyrofail.stages.folder import RunFolder
from pyrofail.stages.references import settings_of

__all__ = ["SECTIONS", "console", "run"]

NOISE_NATS = 0.05  # "within noise": about the restart-to-restart spread the paper reports
TIE_NATS = 5e-4  # below the three decimals the report prints


@dataclass
class Results:
    """What the earlier stages wrote, read once."""

    options: dict
    jobs: list  # finished job records (jobs/<job>/metrics.json)
    failed: dict
    settings: dict | None = None
    posterior: dict = field(default_factory=dict)  # job -> posterior.json
    diagnosis: dict | None = None
    figures: list = field(default_factory=list)  # run-level figures, relative to the run

    @classmethod
    def read(cls, folder: RunFolder) -> Results:
        out = cls(folder.options, folder.finished_jobs(), folder.failed_jobs(), settings_of(folder.options))
        if out.settings is not None and out.jobs:
            for r in out.jobs:
                path = folder.job_dir(r["job"]) / "posterior.json"
                if path.exists():
                    out.posterior[r["job"]] = read_json(path)
            path = folder.root / "diagnosis.json"
            out.diagnosis = read_json(path) if path.exists() else None
            for name in folder.by_model():
                for stem in (f"posterior-{name}", f"pmo-gap-{name}"):
                    if (folder.figures / f"{stem}.png").exists():
                        out.figures.append(f"figures/{stem}.png")
        return out

    @property
    def has_posterior(self) -> bool:
        return self.settings is not None and self.diagnosis is not None


def results_table(results: list[dict]) -> str:
    """One row per job with the foundation metrics."""
    head = (
        "| job | test −ELBO | test −bound | test −log p(x) | PMO gap | MLEO | avg I(x; z_i) "
        "| restart (init) | diverged |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        m = r["metrics"]
        sel = r["restarts"][r["selected_restart"]]
        diverged = sum(rec["diverged_at"] is not None for rec in r["restarts"])
        rows.append(
            f"| {r['job']} | {with_error(m['test_neg_elbo'], m['test_neg_elbo_stderr'])} "
            f"| {with_error(m['test_neg_bound'], m['test_neg_bound_stderr'])} "
            f"| {with_error(m['test_neg_log_px'], m['test_neg_log_px_stderr'])} ({m['log_px_method']}) "
            f"| {with_error(m['pmo_gap'])} | {with_error(m.get('mleo'))} "
            f"| {with_error(m['avg_mutual_information'])} "
            f"| {r['selected_restart']} ({sel['init']}) | {diverged}/{len(r['restarts'])} |"
        )
    return head + "\n".join(rows) + "\n"


def _index(results):
    return {
        (r["config"]["model"], r["config"]["latent_dim"], r["config"]["objective"]): r["metrics"]
        for r in results
        if r["config"]["guide"] == "mean_field"
    }


def table1(results: list[dict], paper: dict) -> str | None:
    """Table 1 of Yacoby et al. in its layout, ours beside the paper's; ``None`` if the run
    does not cover it."""
    idx = _index(results)
    models = [m for m in ("figure8", "clusters") if any(k[0] == m for k in idx)]
    if not models:
        return None
    cols = [(m, k) for m in models for k in (1, 2, 3) if (m, k, "elbo") in idx or (m, k, "iwae") in idx]
    head = "| | " + " | ".join(f"{m} K={k}{' (GT)' if k == 1 else ''}" for m, k in cols) + " |\n"
    head += "|---|" + "---|" * len(cols) + "\n"
    rows = []
    for obj, label in (("elbo", "VAE"), ("iwae", "IWAE")):
        for metric, name in (
            ("neg_bound", "test −ELBO" if obj == "elbo" else "test −IWAE bound"),
            ("mi", "avg_i I(x; z_i)"),
        ):
            cells = []
            for m, k in cols:
                ours = idx.get((m, k, obj))
                value = None
                if ours is not None:
                    value = (
                        ours["test_neg_bound"] if metric == "neg_bound" else ours["avg_mutual_information"]
                    )
                ref = paper.get((m, k, obj, metric))
                ref_text = f" ({ref[0]:.3f})" if ref else ""
                cells.append(f"{with_error(value)}{ref_text}")
            rows.append(f"| {label} {name} | " + " | ".join(cells) + " |")
        cells = []
        for m, k in cols:
            ours = idx.get((m, k, obj))
            cells.append(with_error(ours["test_neg_log_px"]) if ours else "—")
        rows.append(f"| {label} test −log p(x) | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def table1_checks(results: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The orderings Table 1 is about, each as (claim, holds, numbers)."""
    idx = _index(results)
    checks = []
    for model in ("figure8", "clusters"):
        e = {k: idx.get((model, k, "elbo")) for k in (1, 2, 3)}
        w = {k: idx.get((model, k, "iwae")) for k in (1, 2, 3)}
        if all(e.values()):
            v = {k: e[k]["test_neg_bound"] for k in e}
            checks.append(
                (
                    f"{model}: the MFG-VAE's test −ELBO is lower at K = 2 and 3 than at the true K = 1",
                    v[2] < v[1] and v[3] < v[1],
                    f"{v[1]:.3f} / {v[2]:.3f} / {v[3]:.3f} at K = 1 / 2 / 3",
                )
            )
        if all(w.values()):
            v = {k: w[k]["test_neg_bound"] for k in w}
            checks.append(
                (
                    f"{model}: IWAE's test bound at K = 1 is within noise ({NOISE_NATS} nats) of, or "
                    "better than, its K = 2 and 3",
                    v[1] <= min(v[2], v[3]) + NOISE_NATS,
                    f"{v[1]:.3f} / {v[2]:.3f} / {v[3]:.3f} at K = 1 / 2 / 3",
                )
            )
        for obj, label in (("elbo", "VAE"), ("iwae", "IWAE")):
            t = {k: idx.get((model, k, obj)) for k in (1, 2, 3)}
            if all(t.values()):
                mi = {k: t[k]["avg_mutual_information"] for k in t}
                checks.append(
                    (
                        f"{model} {label}: avg_i I(x; z_i) falls with K",
                        mi[1] > mi[2] > mi[3],
                        f"{mi[1]:.3f} / {mi[2]:.3f} / {mi[3]:.3f}",
                    )
                )
        if e[1] and w[1]:
            a, b = -e[1]["test_neg_log_px"], -w[1]["test_neg_log_px"]
            checks.append(
                (
                    f"{model}: the IWAE-trained K = 1 model has a higher test log p(x) than the "
                    "VAE-trained one",
                    b > a,
                    f"IWAE {b:.3f} vs VAE {a:.3f}",
                )
            )
    return checks


def checks_markdown(checks) -> str:
    lines = []
    for claim, holds, numbers in checks:
        mark = "yes" if holds else "**no**"
        lines.append(f"- {claim}: {mark} ({numbers})")
    return "\n".join(lines) + ("\n" if lines else "")


def guides_compared(results: list[dict]) -> str | None:
    """One plain sentence per model, K and objective run with more than one guide: which
    family gives the highest test log p(x), and by how much it beats each of the others.

    A difference within twice the combined standard error of the two estimates (importance
    sampling; the grid's is zero), or below ``TIE_NATS``, is called a tie. ``None`` if no
    group has two guides.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["config"]
        groups.setdefault((c["model"], c["latent_dim"], c["objective"]), []).append(r)
    lines = []
    for (model, k, objective), rs in sorted(groups.items()):
        if len({r["config"]["guide"] for r in rs}) < 2:
            continue
        ranked = sorted(rs, key=lambda r: r["metrics"]["test_neg_log_px"])
        best = ranked[0]["metrics"]
        wins, ties = [], []
        for other in ranked[1:]:
            m, name = other["metrics"], other["config"]["guide"]
            gap = m["test_neg_log_px"] - best["test_neg_log_px"]
            err = (best["test_neg_log_px_stderr"] ** 2 + m["test_neg_log_px_stderr"] ** 2) ** 0.5
            if gap <= max(2 * err, TIE_NATS):
                within = f", within twice its error {err:.3f}" if err > 0 else ""
                ties.append(f"{name}'s (difference {gap:.3f} nats{within})")
            else:
                wins.append(f"{name}'s by {gap:.3f} nats")
        text = f"- {model} K={k} {objective}: {ranked[0]['config']['guide']}'s test log p(x) "
        text += f"({-best['test_neg_log_px']:.3f})"
        if wins:
            text += " is higher than " + " and ".join(wins)
        if ties:
            text += (";" if wins else "") + " ties with " + " and ".join(ties)
        lines.append(text + ".")
    return "\n".join(lines) + "\n" if lines else None


def posterior_table(records: dict) -> str:
    """Posterior bias of every job's guide against its own model's reference posterior."""
    head = (
        "| job | reference | points | ELBO | log p(x) | PMO gap = KL(q‖p) | KL(p‖q) | best MFG KL* "
        "| mode-mass error | energy distance | PSIS k̂ median (share > thr) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for job, rec in records.items():
        if "skipped" in rec:
            rows.append(f"| {job} | skipped: {rec['skipped']} |" + " |" * 9)
            continue
        m = rec["model"]["mean"]
        best = rec.get("best_mean_field")
        rows.append(
            f"| {job} | {rec['reference_method']} | {rec['n_points']} | {number(m['elbo'])} "
            f"| {number(m['log_px'])} | {number(m['pmo_gap'])} | {number(m['forward_kl'])} "
            f"| {number(best['mean'] if best else None)} | {number(m['mode_mass_error'])} "
            f"| {number(m['energy_distance'])} | {number(m['pareto_k_median'], 2)} "
            f"({number(m['pareto_k_bad_share'], 2)} > {number(m['pareto_k_threshold'], 2)}) |"
        )
    return head + "\n".join(rows) + "\n"


def truth_table(records: dict) -> str:
    """Every job's guide and model against the ground truth's posterior (where K agrees)."""
    head = (
        "| job | KL(q‖p_GT) | KL(p_GT‖q) | mode-mass error | energy distance | posterior shift "
        "| MLEO |\n|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for job, rec in records.items():
        if "skipped" in rec:
            continue
        t = (rec.get("truth") or {}).get("mean") or {}
        rows.append(
            f"| {job} | {number(t.get('pmo_gap'))} | {number(t.get('forward_kl'))} "
            f"| {number(t.get('mode_mass_error'))} | {number(t.get('energy_distance'))} "
            f"| {number(t.get('posterior_shift'))} "
            f"| {with_error(rec['mleo']['mean'], rec['mleo']['stderr'])} |"
        )
    return head + "\n".join(rows) + "\n"


def diagnosis_markdown(diagnoses: dict) -> str:
    """The diagnosis of every process: the sentences and the guidelines that apply."""
    lines = []
    for name, d in diagnoses.items():
        lines.append(f"### {name}: {d['failure']}")
        lines.append("")
        lines += [f"- {s}" for s in d["sentences"]]
        for g in d.get("guidelines", []):
            lines.append(f"- Guideline (Yacoby et al. 2020): {g}")
        lines.append("")
    return "\n".join(lines)


def _posterior_summary(record: dict) -> dict:
    """A job's posterior record without its per-point values (those stay in the job folder)."""
    out = {
        "reference_method": record["reference_method"],
        "n_points": record["n_points"],
        "model": record["model"]["mean"],
        "truth": None if record["truth"] is None else record["truth"]["mean"],
        "mleo": {k: record["mleo"][k] for k in ("mean", "stderr")},
    }
    best = record.get("best_mean_field")
    out["best_mean_field"] = None if best is None else {k: best[k] for k in ("mean", "share_hard")}
    return out


def metrics_summary(res: Results) -> dict:
    """The content of the run's ``metrics.json``."""
    checks = table1_checks(res.jobs)
    out = {
        "jobs": {r["job"]: {k: r[k] for k in ("metrics", "restarts", "selected_restart")} for r in res.jobs},
        "failed": res.failed,
        "table1_checks": [{"claim": c, "holds": h, "numbers": n} for c, h, n in checks],
    }
    if res.has_posterior:
        out["posterior"] = {
            "settings": res.settings,
            "jobs": {job: _posterior_summary(rec) for job, rec in res.posterior.items()},
        }
        out["diagnosis"] = res.diagnosis
    return out


# ----------------------------------------------------------------------------------------
# the sections of report.md, in order


def section_header(res: Results) -> list[str]:
    o = res.options
    return [
        "# pyrofail run report",
        "",
        f"Preset `{o['preset']}`; models {', '.join(o['model'])}; K "
        f"{', '.join(map(str, o['latent_dim']))}; guides {', '.join(o['guide'])}; "
        f"objectives {', '.join(o['objective'])}; {o['restarts']} restarts, "
        f"{o['steps']} steps, seed {o['seed']}; "
        f"{o['n_train']}/{o['n_val']}/{o['n_test']} train/validation/test points.",
        "",
    ]


def section_results(res: Results) -> list[str]:
    lines = [
        "## Results",
        "",
        "test −ELBO: mean over test points of the per-point ELBO (± Monte Carlo error); "
        "test −bound: the training objective on test data (the ELBO, or the IWAE bound with the "
        "training particle count); test −log p(x): exact quadrature for K ≤ 2 (`grid`), else "
        "importance sampling from the guide (`isN`); PMO gap: log p(x) − ELBO = "
        "E KL(q(z|x) ‖ p(z|x)); MLEO: KL(p_GT(x) ‖ p_θ(x)) on the test points; avg I(x; z_i): "
        "encoder mutual information per latent dimension with the aggregate posterior over the "
        "test points.",
        "",
        results_table(res.jobs),
    ]
    for job, reason in res.failed.items():
        lines += [f"**{job} failed**: {reason}", ""]
    return lines


def section_table1(res: Results) -> list[str]:
    t1 = table1(res.jobs, PAPER_TABLE1)
    if not t1:
        return []
    return [
        "## Table 1 of Yacoby et al. (2020): ours (paper)",
        "",
        "Our numbers come from our own data sets (the paper's are not public) and the paper "
        "does not state the constants of its likelihood, so compare orderings and gaps, "
        "not absolute values.",
        "",
        t1,
    ]


def section_orderings(res: Results) -> list[str]:
    checks = table1_checks(res.jobs)
    return ["## Orderings", "", checks_markdown(checks)] if checks else []


def section_guides(res: Results) -> list[str]:
    compared = guides_compared(res.jobs)
    if not compared:
        return []
    return ["## Guides compared", "", "Highest test log p(x) per model, K and objective.", "", compared]


def section_posterior_bias(res: Results) -> list[str]:
    if not res.has_posterior:
        return []
    s = res.settings
    return [
        "## Posterior bias",
        "",
        f"Each guide against the reference posterior of its own model at the first "
        f"{s['points']} test points, or all of them if fewer (`points`; "
        f"`--reference {s['method']}`, {s['draws']} draws per point). ELBO and "
        "log p(x): means over the points; PMO "
        "gap: log p(x) − ELBO, the reverse KL(q‖p); KL(p‖q): the forward KL from the "
        "reference draws; best MFG KL*: the smallest reverse KL any mean-field Gaussian reaches "
        "per point (what a perfect, non-amortized mean-field encoder would pay; the PMO gap "
        "minus it is the price of amortization and training); mode-mass error: total variation "
        "between the masses q and p put on the modes of p; energy distance: 2E‖Y−Z‖ − E‖Y−Y′‖ − "
        "E‖Z−Z′‖, zero only when q = p (Gneiting & Raftery 2007); PSIS k̂: Pareto shape of the "
        "importance weights p/q (Vehtari et al. 2024), median and share of points above the "
        "threshold where importance sampling from the guide fails.",
        "",
        posterior_table(res.posterior),
        "Against the ground truth's posterior p_GT(z|x) at the same points (jobs at the true "
        "K): the same quantities for the guide; posterior shift: the energy distance between "
        "the learned model's posterior p_θ(z|x) and the truth's (how far the latent space "
        "moved); MLEO: mean of log p_GT(x) − log p_θ(x) (± its standard error).",
        "",
        truth_table(res.posterior),
    ]


def section_diagnosis(res: Results) -> list[str]:
    if not res.has_posterior:
        return []
    return [
        "## Diagnosis",
        "",
        "The failure conditions of Yacoby, Pan & Doshi-Velez (2020), decided from the numbers "
        "above (`pyrofail.analysis.diagnose`).",
        "",
        diagnosis_markdown(res.diagnosis),
    ]


def section_figures(res: Results) -> list[str]:
    lines = ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in res.figures]
    for r in res.jobs:
        for f in r["figures"]:
            lines.append(f"![{r['job']} {Path(f).stem}](jobs/{r['job']}/{f})")
    return lines + [""]


SECTIONS = (
    section_header,
    section_results,
    section_table1,
    section_orderings,
    section_guides,
    section_posterior_bias,
    section_diagnosis,
    section_figures,
)


def markdown(res: Results) -> str:
    return "\n".join(line for section in SECTIONS for line in section(res))


def run(folder: RunFolder) -> None:
    res = Results.read(folder)
    atomic_write_json(folder.root / "metrics.json", metrics_summary(res))
    atomic_write_text(folder.root / "report.md", markdown(res))


def console(folder: RunFolder) -> str:
    """What the command line prints at the end of a run: the main tables."""
    res = Results.read(folder)
    parts = [results_table(res.jobs)]
    t1 = table1(res.jobs, PAPER_TABLE1)
    if t1 and res.options.get("preset") == "table1":
        parts.append(t1)
    checks = table1_checks(res.jobs)
    if checks:
        parts.append(checks_markdown(checks))
    if res.has_posterior:
        parts += [posterior_table(res.posterior), diagnosis_markdown(res.diagnosis)]
    parts.append(f"report: {folder.root / 'report.md'}")
    return "\n".join(parts)
