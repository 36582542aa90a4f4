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

import torch

from pyrofail.analysis.uncertainty import paired_difference, verdict
from pyrofail.numbers import number, with_error
from pyrofail.presets import PAPER_TABLE1
from pyrofail.runs import atomic_write_json, atomic_write_text, read_json
from pyrofail.stages.folder import RunFolder, process_id
from pyrofail.stages.references import settings_of

__all__ = ["SECTIONS", "console", "run"]

NOISE_NATS = 0.05  # "within noise": about the restart-to-restart spread the paper reports


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
    points: dict = field(default_factory=dict)  # job -> test_points.json (per-point values)
    failure_map: dict = field(default_factory=dict)  # model -> rows over the truth's noise
    data: dict | None = None  # data.json of a run on a user's data
    downstream: dict = field(default_factory=dict)  # downstream.json
    hardness: dict = field(default_factory=dict)  # process -> truth/<process>/hardness.json
    regression: dict = field(default_factory=dict)  # process -> regression/<process>.json

    @classmethod
    def read(cls, folder: RunFolder) -> Results:
        out = cls(folder.options, folder.finished_jobs(), folder.failed_jobs(), settings_of(folder.options))
        if (folder.root / "data.json").exists():
            out.data = read_json(folder.root / "data.json")
        if (folder.root / "downstream.json").exists():
            out.downstream = read_json(folder.root / "downstream.json")
        for name in folder.options.get("regression") or []:
            path = folder.root / "regression" / f"{name}.json"
            if path.exists():
                out.regression[name] = read_json(path)
        for r in out.jobs:
            path = folder.job_dir(r["job"]) / "test_points.json"
            if path.exists():
                out.points[r["job"]] = read_json(path)
        if out.settings is not None and out.jobs:
            for r in out.jobs:
                path = folder.job_dir(r["job"]) / "posterior.json"
                if path.exists():
                    out.posterior[r["job"]] = read_json(path)
            path = folder.root / "diagnosis.json"
            out.diagnosis = read_json(path) if path.exists() else None
            path = folder.root / "failure_map.json"
            out.failure_map = read_json(path) if path.exists() else {}
            for model in out.failure_map:
                out.figures.append(f"figures/failure-map-{model}.png")
            for name in folder.by_process():
                path = folder.truth_dir(name) / "hardness.json"
                if path.exists():
                    out.hardness[name] = read_json(path)
                for stem in (f"posterior-{name}", f"pmo-gap-{name}"):
                    if (folder.figures / f"{stem}.png").exists():
                        out.figures.append(f"figures/{stem}.png")
        return out

    @property
    def has_posterior(self) -> bool:
        return self.settings is not None and self.diagnosis is not None and bool(self.posterior)


def results_table(results: list[dict]) -> str:
    """One row per job with the foundation metrics."""
    head = (
        "| job | test −ELBO | test −bound | test −log p(x) | PMO gap | MLEO | avg I(x; z_i) "
        "| restart (init) | diverged |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        m = r["metrics"]

        def cell(key, m=m):  # a metric with its standard error, "—" where the job has none
            return with_error(m.get(key), m.get(f"{key}_stderr"))

        sel = r["restarts"][r["selected_restart"]]
        diverged = sum(rec["diverged_at"] is not None for rec in r["restarts"])
        method = f" ({m['log_px_method']})" if "log_px_method" in m else ""
        rows.append(
            f"| {r['job']} | {cell('test_neg_elbo')} | {cell('test_neg_bound')} "
            f"| {cell('test_neg_log_px')}{method} | {cell('pmo_gap')} | {cell('mleo')} "
            f"| {cell('avg_mutual_information')} "
            f"| {r['selected_restart']} ({sel['init']}) | {diverged}/{len(r['restarts'])} |"
        )
    return head + "\n".join(rows) + "\n"


def _table1_job(r: dict) -> bool:
    """A job of Table 1's kind: the mean-field guide trained jointly (not LiBI or post hoc)."""
    return r["config"]["guide"] == "mean_field" and r["config"].get("procedure", "joint") == "joint"


def _index(results):
    """Table 1's jobs by (process, K, objective)."""
    return {
        (process_id(r["config"]), r["config"]["latent_dim"], r["config"]["objective"]): r
        for r in results
        if _table1_job(r)
    }


def _noise_text(metrics: dict | None, learned: bool | None) -> str:
    """The selected restart's noise scale (the mean over features if one per feature),
    marked "(fixed)" where it was not learned; "—" for a cell the run has no job for."""
    if metrics is None or metrics.get("noise_scale") is None:
        return "—"
    sigma = torch.as_tensor(metrics["noise_scale"], dtype=torch.float64).mean()
    return with_error(float(sigma)) + ("" if learned else " (fixed)")


def _within(value, ref) -> bool | None:
    """Whether ``value`` lies within the paper's mean ± 2 sd (``ref = (mean, sd)``)."""
    if value is None or ref is None:
        return None
    return abs(float(value) - ref[0]) <= 2 * ref[1]


def table1(results: list[dict], paper: dict) -> str | None:
    """Table 1 of Yacoby et al. in its layout, ours beside the paper's; ``None`` if the run
    does not cover it."""
    jobs = _index(results)
    idx = {key: r["metrics"] for key, r in jobs.items()}
    learned = {
        key: bool(r["config"].get("learn_noise") or r["config"].get("noise_per_feature"))
        for key, r in jobs.items()
    }
    models = [m for m in ("figure8", "clusters") if any(k[0] == m for k in idx)]
    if not models:
        return None
    cols = [(m, k) for m in models for k in (1, 2, 3) if (m, k, "elbo") in idx or (m, k, "iwae") in idx]
    head = "| | " + " | ".join(f"{m} K={k}{' (GT)' if k == 1 else ''}" for m, k in cols) + " |\n"
    head += "|---|" + "---|" * len(cols) + "\n"
    rows = []
    inside = {"neg_bound": [], "mi": []}
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
                ref_text = f" ({ref[0]:.3f} ± {ref[1]:.3f})" if ref else ""
                ok = _within(value, ref)
                if ok is not None:
                    inside[metric].append(ok)
                mark = "" if ok is None else (" ✓" if ok else " ✗")
                cells.append(f"{with_error(value)}{ref_text}{mark}")
            rows.append(f"| {label} {name} | " + " | ".join(cells) + " |")
        cells = []
        for m, k in cols:
            ours = idx.get((m, k, obj))
            cells.append(with_error(ours["test_neg_log_px"]) if ours else "—")
        rows.append(f"| {label} test −log p(x) | " + " | ".join(cells) + " |")
        if any(learned.get((m, k, obj)) for m, k in cols):
            # The paper's caption: the ELBO prefers more latent dimensions *and smaller noise*.
            cells = [_noise_text(idx.get((m, k, obj)), learned.get((m, k, obj))) for m, k in cols]
            rows.append(f"| {label} σ | " + " | ".join(cells) + " |")
    counts = [
        f"{sum(inside[m])} of {len(inside[m])} {what}"
        for m, what in (("neg_bound", "test bounds"), ("mi", "avg_i I(x; z_i) cells"))
        if inside[m]
    ]
    tail = ""
    if counts:
        tail = (
            "\n✓: inside the paper's mean ± 2 sd (✗: outside); " + " and ".join(counts) + " lie inside it.\n"
        )
    return head + "\n".join(rows) + "\n" + tail


def _per_point(points: dict, job: dict, key: str) -> torch.Tensor:
    """A job's per-point values of ``key`` (``test_points.json``), the mutual information
    averaged over latent dimensions."""
    v = torch.as_tensor(points[job["job"]][key], dtype=torch.float64)
    return v.mean(-1) if v.dim() == 2 else v


def _ordering(claim: str, diffs: list[dict], margin: float = 0.0) -> tuple[str, str, str]:
    """``(claim, outcome, numbers)``: the claim is that every paired difference in ``diffs``
    is above ``-margin``; ``"yes"`` when each is, by more than two standard errors, ``"no"``
    when one is below by as much, ``"tie"`` otherwise."""
    outcomes = {verdict({**d, "mean": d["mean"] + margin}) for d in diffs}
    outcome = "no" if "less" in outcomes else "tie" if "tie" in outcomes else "yes"
    numbers = "; ".join(f"{d['label']} {with_error(d['mean'], d['stderr'])}" for d in diffs)
    return claim, outcome, numbers


def _diff(points, a, b, key, label, sign=1.0) -> dict:
    """The paired difference ``sign * (a - b)`` of per-point ``key`` over the test points."""
    d = paired_difference(sign * _per_point(points, a, key), sign * _per_point(points, b, key))
    return {**d, "label": label}


def table1_checks(results: list[dict], points: dict) -> list[tuple[str, str, str]]:
    """The orderings Table 1 is about, each as ``(claim, outcome, numbers)``: each ordering
    is a paired difference over the same test points with its standard error, and the outcome
    is ``"yes"``, ``"no"`` or ``"tie"`` (inside two standard errors: the run cannot tell)."""
    idx = {
        (process_id(r["config"]), r["config"]["latent_dim"], r["config"]["objective"]): r
        for r in results
        if _table1_job(r) and r["job"] in points
    }
    checks = []
    for model in ("figure8", "clusters"):
        e = {k: idx.get((model, k, "elbo")) for k in (1, 2, 3)}
        w = {k: idx.get((model, k, "iwae")) for k in (1, 2, 3)}
        if all(e.values()):
            diffs = [_diff(points, e[1], e[k], "neg_elbo", f"K=1 − K={k}") for k in (2, 3)]
            checks.append(
                _ordering(
                    f"{model}: the MFG-VAE's test −ELBO is lower at K = 2 and 3 than at the true K = 1", diffs
                )
            )
        if all(w.values()):
            diffs = [_diff(points, w[k], w[1], "neg_bound", f"K={k} − K=1") for k in (2, 3)]
            checks.append(
                _ordering(
                    f"{model}: IWAE's test bound at K = 1 is within noise ({NOISE_NATS} nats) of, or "
                    "better than, its K = 2 and 3",
                    diffs,
                    margin=NOISE_NATS,
                )
            )
        for obj, label in (("elbo", "VAE"), ("iwae", "IWAE")):
            t = {k: idx.get((model, k, obj)) for k in (1, 2, 3)}
            if all(t.values()):
                diffs = [
                    _diff(points, t[1], t[2], "mutual_information", "K=1 − K=2"),
                    _diff(points, t[2], t[3], "mutual_information", "K=2 − K=3"),
                ]
                checks.append(_ordering(f"{model} {label}: avg_i I(x; z_i) falls with K", diffs))
        if e[1] and w[1]:
            diff = _diff(points, w[1], e[1], "log_px", "IWAE − VAE")
            checks.append(
                _ordering(
                    f"{model}: the IWAE-trained K = 1 model has a higher test log p(x) than the VAE's",
                    [diff],
                )
            )
    return checks


def checks_markdown(checks) -> str:
    marks = {"yes": "yes", "no": "**no**", "tie": "tie (inside two standard errors)"}
    lines = [f"- {claim}: {marks[outcome]} ({numbers})" for claim, outcome, numbers in checks]
    return "\n".join(lines) + ("\n" if lines else "")


def guides_compared(results: list[dict], points: dict) -> str | None:
    """One plain sentence per model, K and objective run with more than one guide: which
    family gives the highest test log p(x), and by how much it beats each of the others.

    Each difference is paired over the same test points, with its standard error (the Monte
    Carlo errors of importance-sampled log p(x) added in quadrature); one within two standard
    errors is a tie. ``None`` if no group has two guides.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["config"]
        if "log_px" in points.get(r["job"], {}):
            groups.setdefault((process_id(c), c["latent_dim"], _trained_by(c)), []).append(r)
    lines = []
    for (model, k, objective), rs in sorted(groups.items()):
        if len({r["config"]["guide"] for r in rs}) < 2:
            continue
        ranked = sorted(rs, key=lambda r: r["metrics"]["test_neg_log_px"])
        best = ranked[0]
        wins, ties = [], []
        for other in ranked[1:]:
            mc = (
                best["metrics"]["test_neg_log_px_stderr"] ** 2
                + other["metrics"]["test_neg_log_px_stderr"] ** 2
            ) ** 0.5
            d = paired_difference(_per_point(points, best, "log_px"), _per_point(points, other, "log_px"), mc)
            name = other["config"]["guide"]
            if verdict(d) == "tie":
                ties.append(f"{name}'s (difference {with_error(d['mean'], d['stderr'])} nats)")
            else:
                wins.append(f"{name}'s by {with_error(d['mean'], d['stderr'])} nats")
        text = f"- {model} K={k} {objective}: {best['config']['guide']}'s test log p(x) "
        text += f"({-best['metrics']['test_neg_log_px']:.3f})"
        if wins:
            text += " is higher than " + " and ".join(wins)
        if ties:
            text += (";" if wins else "") + " ties with " + " and ".join(ties)
        lines.append(text + ".")
    return "\n".join(lines) + "\n" if lines else None


def posterior_table(records: dict) -> str:
    """Posterior bias of every job's guide against its own model's reference posterior."""
    head = (
        "| job | reference | points used (left out) | ELBO | log p(x) | PMO gap = KL(q‖p) | KL(p‖q) "
        "| best MFG KL* | mode-mass error | energy distance | PSIS k̂ median (share > thr) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for job, rec in records.items():
        m = rec["model"]["mean"]
        best = rec.get("best_mean_field")
        excluded = rec.get("excluded", 0)
        points = f"{rec['n_points'] - excluded} ({excluded})"
        rows.append(
            f"| {job} | {rec['reference_method']} | {points} | {number(m.get('elbo'))} "
            f"| {number(m.get('log_px'))} | {number(m.get('pmo_gap'))} | {number(m.get('forward_kl'))} "
            f"| {number(best['mean'] if best else None)} | {number(m.get('mode_mass_error'))} "
            f"| {number(m.get('energy_distance'))} | {number(m.get('pareto_k_median'), 2)} "
            f"({number(m.get('pareto_k_bad_share'), 2)} > {number(m.get('pareto_k_threshold'), 2)}) |"
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
        if rec.get("mleo") is None:  # a user's data: there is no truth
            continue
        t = (rec.get("truth") or {}).get("mean") or {}
        rows.append(
            f"| {job} | {number(t.get('pmo_gap'))} | {number(t.get('forward_kl'))} "
            f"| {number(t.get('mode_mass_error'))} | {number(t.get('energy_distance'))} "
            f"| {number(t.get('posterior_shift'))} "
            f"| {with_error(*(rec['mleo'][k] for k in ('mean', 'stderr'))) if rec['mleo'] else '—'} |"
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
        "mleo": None if record["mleo"] is None else {k: record["mleo"][k] for k in ("mean", "stderr")},
    }
    best = record.get("best_mean_field")
    out["best_mean_field"] = None if best is None else {k: best[k] for k in ("mean", "share_hard")}
    return out


def metrics_summary(res: Results) -> dict:
    """The content of the run's ``metrics.json``."""
    checks = table1_checks(res.jobs, res.points)
    out = {
        "jobs": {r["job"]: {k: r[k] for k in ("metrics", "restarts", "selected_restart")} for r in res.jobs},
        "failed": res.failed,
        "table1_checks": [{"claim": c, "outcome": o, "numbers": n} for c, o, n in checks],
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
    if o.get("data") is not None:
        what = f"data `{o['data']}`"
        sizes = "the split of the Data section"
    else:
        noise = f" at σ = {', '.join(map(str, o['truth_noise']))}" if o.get("truth_noise") else ""
        what = f"models {', '.join(o['model'])}{noise}"
        sizes = f"{o['n_train']}/{o['n_val']}/{o['n_test']} train/validation/test points"
    procedures = o.get("procedure") or ["joint"]
    return [
        "# pyrofail run report",
        "",
        f"Preset `{o['preset']}`; {what}; K {', '.join(map(str, o['latent_dim']))}; guides "
        f"{', '.join(o['guide'])}; objectives {', '.join(o['objective'])}; procedures "
        f"{', '.join(procedures)}; {o['restarts']} restarts, {o['steps']} steps, seed {o['seed']}; "
        f"{sizes}.",
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


def section_training(res: Results) -> list[str]:
    """What each fit trained on: mixture guides train on stratified estimators, which may cost
    more model evaluations per point than the plain estimator the other families use."""

    def bound(m, key):
        return with_error(m[key], m[f"{key}_stderr"])

    rows = [
        f"| {r['job']} | {r['metrics']['trained_on']} | {bound(r['metrics'], 'test_neg_bound')} "
        f"| {bound(r['metrics'], 'test_neg_training_bound')} |"
        for r in res.jobs
        if "trained_on" in r["metrics"]
    ]
    if not rows:
        return []
    return [
        "## What each fit trained on",
        "",
        "test −bound: the objective's plain estimator on test data, the same for every family "
        "(comparable across guides); test −training bound: the estimator the fit was trained "
        "with (for mixture guides the stratified one, Morningstar et al. 2021); with "
        "`--matched-budget` the stratified IWAE splits its draws over the components.",
        "",
        "| job | trained on | test −bound | test −training bound |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _trained_by(config: dict) -> str:
    """The objective, and the procedure where it is not the usual joint training."""
    procedure = config.get("procedure", "joint")
    return config["objective"] if procedure == "joint" else f"{config['objective']} ({procedure})"


def choosing_k(results: list[dict], points: dict) -> list[str]:
    """Rows of the table that shows which latent dimension each objective would choose: per
    process, guide and objective run at several K, the test −ELBO and −log p(x) at each K, and
    the K each picks; Ks within two paired standard errors of the pick tie with it."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["config"]
        if "log_px" in points.get(r["job"], {}):
            groups.setdefault((process_id(c), c["guide"], _trained_by(c)), []).append(r)
    rows = []
    for (process, guide, objective), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["config"]["latent_dim"])
        picks = []
        for key, metric in (("neg_elbo", "test_neg_elbo"), ("log_px", "test_neg_log_px")):
            best = min(rs, key=lambda r: r["metrics"][metric])
            tied = []
            for r in rs:
                if r is best:
                    continue
                d = paired_difference(_per_point(points, r, key), _per_point(points, best, key))
                if verdict(d) == "tie":
                    tied.append(str(r["config"]["latent_dim"]))
            tie = f" (ties: K = {', '.join(tied)})" if tied else ""
            picks.append(f"{best['config']['latent_dim']}{tie}")
        values = " / ".join(
            f"{number(r['metrics']['test_neg_elbo'])}, {number(r['metrics']['test_neg_log_px'])}" for r in rs
        )
        ks = "/".join(str(r["config"]["latent_dim"]) for r in rs)
        rows.append(f"| {process} | {guide} | {objective} | {ks} | {values} | {picks[0]} | {picks[1]} |")
    return rows


def section_choosing_k(res: Results) -> list[str]:
    rows = choosing_k(res.jobs, res.points)
    if not rows:
        return []
    return [
        "## Which latent dimension each criterion chooses",
        "",
        "The test −ELBO and −log p(x) at each K (in the order of the K column), and the K with "
        "the lowest of each; a K whose paired difference from it is within two standard errors "
        "ties with it. The ELBO tends to prefer more latent dimensions than p(x) needs (Yacoby et "
        "al. 2020, Table 1).",
        "",
        "| process | guide | objective | K | −ELBO, −log p(x) at each K | ELBO picks K | log p(x) picks K |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def section_data(res: Results) -> list[str]:
    data = res.data
    if data is None:
        return []
    std = data["standardizer"]
    return [
        "## Data",
        "",
        f"`{data['source']}`: {len(data['features'])} features; "
        f"{data['sizes']['train']}/{data['sizes']['val']}/{data['sizes']['test']} "
        "train/validation/test rows (a seeded split, `data.json` lists them); "
        + (
            "standardised with the training rows' mean and sd (in `data.json`). "
            if std
            else "in its own units. "
        )
        + "There is no ground truth: the best-fitting model at each K stands in for it in the "
        "diagnosis, and log p(x) is estimated by importance sampling from each model's guide.",
        "",
    ]


def section_table1(res: Results) -> list[str]:
    t1 = table1(res.jobs, PAPER_TABLE1)
    if not t1:
        return []
    return [
        "## Table 1 of Yacoby et al. (2020): ours (paper)",
        "",
        "Our numbers come from our own data sets (the paper's are not public) and the paper "
        "does not state the constants of its likelihood (docs/results.md records how ours were "
        "calibrated); the paper's mean ± sd over its restarts in brackets.",
        "",
        t1,
    ]


def section_orderings(res: Results) -> list[str]:
    checks = table1_checks(res.jobs, res.points)
    return ["## Orderings", "", checks_markdown(checks)] if checks else []


def section_guides(res: Results) -> list[str]:
    compared = guides_compared(res.jobs, res.points)
    if not compared:
        return []
    return ["## Guides compared", "", "Highest test log p(x) per model, K and objective.", "", compared]


def reference_quality_table(res: Results) -> str:
    """One row per reference posterior: its method, points, the share failing the quality
    gate, and the share failing each check."""
    rows = [(f"truth/{name}", rec["quality"]) for name, rec in res.hardness.items() if "quality" in rec]
    rows += [(job, rec["quality"]) for job, rec in res.posterior.items() if "quality" in rec]
    checks = list(dict.fromkeys(k for _, q in rows for k in q["summary"] if k != "any"))
    head = "| reference | method | points | failing the gate | " + " | ".join(checks) + " |\n"
    head += "|" + "---|" * (4 + len(checks)) + "\n"
    lines = []
    for name, q in rows:
        cells = [f"{100 * q['summary'][c]:.0f}%" if c in q["summary"] else "—" for c in checks]
        lines.append(
            f"| {name} | {q['method']} | {len(q['ok'])} | {100 * q['summary']['any']:.0f}% | "
            + " | ".join(cells)
            + " |"
        )
    return head + "\n".join(lines) + "\n"


def section_reference_quality(res: Results) -> list[str]:
    if not res.has_posterior or not (res.hardness or res.posterior):
        return []
    limits = {}
    for rec in [*res.hardness.values(), *res.posterior.values()]:
        limits.update((rec.get("quality") or {}).get("limits", {}))
    return [
        "## Reference quality",
        "",
        "Every reference posterior is checked point by point before anything is measured against "
        "it (`pyrofail.analysis.reference.quality`): for NUTS, the within-mode R-hat, the effective sample "
        "size, the Pareto k̂ of the importance weights behind log p(x) and the mode masses, the "
        "posterior mass outside every mode found (missing) or in modes no chain's draws cover "
        "(unrepresented), divergent transitions and the standard error of log p(x); for the grid, "
        "the mass at the box's edge and in cells left coarse. Limits: "
        + ", ".join(f"{k} {v:g}" for k, v in limits.items())
        + ". A point whose reference fails is left out of the posterior-bias means and of the "
        "diagnosis, and counted there.",
        "",
        reference_quality_table(res),
    ]


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
    ] + (
        [
            "Against the ground truth's posterior p_GT(z|x) at the same points (jobs at the true "
            "K): the same quantities for the guide; posterior shift: the energy distance between "
            "the learned model's posterior p_θ(z|x) and the truth's (how far the latent space "
            "moved); MLEO: mean of log p_GT(x) − log p_θ(x) (± its standard error).",
            "",
            truth_table(res.posterior),
        ]
        if any(rec.get("mleo") is not None for rec in res.posterior.values())
        else []
    )


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


def section_failure_map(res: Results) -> list[str]:
    if not res.failure_map:
        return []
    lines = [
        "## The failure map",
        "",
        "Each process at every noise scale σ of its ground truth: the MLEO of the MFG-VAE and of "
        "the comparator (± standard error), their paired difference, the share of test points "
        "whose true posterior is hard for a mean-field Gaussian against the share Cx1 asks for, "
        "the MFG guide's PMO gap, and the verdict.",
        "",
    ]
    for model, rows in res.failure_map.items():
        lines += [
            f"### {model}",
            "",
            "| σ | MLEO MFG-VAE | MLEO comparator | difference | hard (Cx1 asks) | PMO gap | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            d = r["px_cost"]
            lines.append(
                f"| {r['sigma']:g} | {with_error(r['mleo_mfg'], r['mleo_mfg_se'])} "
                f"| {with_error(r['mleo_other'], r['mleo_other_se'])} "
                f"| {with_error(d['mean'], d['stderr'])} "
                f"| {100 * r['share_hard']:.0f}% ({100 * r['cx1_share']:.0f}%) | {number(r['pmo_gap'])} "
                f"| {r['failure']} |"
            )
        lines += ["", f"![failure map of {model}](figures/failure-map-{model}.png)", ""]
    return lines


def _against_mfg(diff: dict, lower_is_better: bool) -> str:
    """A paired difference (other − MFG-VAE) in words: better, worse, or a tie."""
    side = verdict(diff)
    if side == "tie":
        word = "tie"
    else:
        word = "better" if (side == "less") == lower_is_better else "worse"
    return f"{with_error(diff['mean'], diff['stderr'])} ({word})"


def _dci_cell(dci: dict | None) -> str:
    """DCI's disentanglement / completeness / informativeness (test R² or accuracy), each ± its
    bootstrap standard error."""
    if dci is None:
        return "—"
    keys = (("disentanglement", "disentanglement"), ("completeness", "completeness"))
    keys += (("informativeness_test", "informativeness_test"),)
    return " / ".join(with_error(dci[k], dci.get(f"{e}_stderr")) for k, e in keys)


def libi_rows(results: list[dict], points: dict) -> dict:
    r"""For each LiBI job, the jointly trained jobs of the same process, K and guide (ELBO and
    IWAE) beside it: ``{libi job: [(job, metrics, paired MLEO difference LiBI − job or None)]}``.
    The MLEO difference is paired over the test points: :math:`\log p_{joint}(x) - \log
    p_{LiBI}(x)` per point."""
    out = {}
    for r in results:
        cfg = r["config"]
        if cfg.get("procedure") != "libi":
            continue
        key = (process_id(cfg), cfg["latent_dim"])
        rows = [(r, None)]
        for other in results:
            c = other["config"]
            if (process_id(c), c["latent_dim"]) != key or c.get("procedure", "joint") != "joint":
                continue
            diff = None
            if r["job"] in points and other["job"] in points:
                diff = _diff(points, other, r, "log_px", f"LiBI − {other['job']}")
            rows.append((other, diff))
        out[r["job"]] = rows
    return out


def section_libi(res: Results) -> list[str]:
    table = libi_rows(res.jobs, res.points)
    if not table:
        return []
    lines = [
        "## Likelihood before inference (LiBI)",
        "",
        "LiBI (Yacoby, Pan & Doshi-Velez 2019) fits the decoder first by maximum likelihood — the "
        "exact log p(x) by quadrature, with a penalty on the aggregate posterior's KL from p(z) "
        "(this project's reading of \"an inference model that respects the modelling "
        'assumptions") — then the guide to the fixed decoder by the ELBO. Beside it, the same '
        "process and K trained jointly. MLEO: KL(p_GT(x) ‖ p_θ(x)) on the test points; Δ MLEO: "
        "LiBI minus the joint fit, paired over the test points (a difference within two standard "
        "errors is a tie); aggregate KL: KL of the model's aggregate exact posterior from p(z).",
        "",
    ]
    words = {"greater": "LiBI worse", "less": "LiBI better", "tie": "tie"}
    for libi, rows in table.items():
        lines += [
            f"### {libi}",
            "",
            "| job | MLEO | Δ MLEO (LiBI − this) | PMO gap | aggregate KL | avg I(x; z_i) |",
            "|---|---|---|---|---|---|",
        ]
        for r, diff in rows:
            m = r["metrics"]
            delta = "—"
            if diff is not None:
                delta = f"{with_error(diff['mean'], diff['stderr'])} ({words[verdict(diff)]})"
            lines.append(
                f"| {r['job']} | {number(m.get('mleo'))} | {delta} | {number(m.get('pmo_gap'))} "
                f"| {number(m.get('aggregate_kl'))} | {number(m.get('avg_mutual_information'))} |"
            )
        lines.append("")
    return lines


def section_downstream(res: Results) -> list[str]:
    if not res.downstream:
        return []
    lines = [
        "## Downstream tasks",
        "",
        "What the fits cost in the tasks VAEs are used for (Yacoby et al. 2020, Section 6), on "
        "the test points. Compression: the total I(x; z) of the encoder (± standard error over "
        "points). Disentanglement: MIG and DCI of the encoder means about the true factors "
        "(disentanglement_lib's definitions). Robustness: the worst ℓ∞ perturbation of radius ε "
        "for the encoder, KL(q(z|x) ‖ q(z|x+δ)), and the truth's exact posterior shift under the "
        "same δ (how sensitive an ideal encoder is); de-noising: the reconstruction error under "
        "the attack on the decoded encoder mean. Outliers: AUROC of log p(x) between held-out "
        "points and off-manifold points of the truth. Against the MFG-VAE: each fit minus the "
        "MFG-VAE, paired over points where the task allows it; a difference within two standard "
        "errors is a tie.",
        "",
    ]
    for process, block in res.downstream.items():
        if block.get("data"):
            lines += _data_downstream_lines(process, block)
            continue
        jobs, truth = block["jobs"], block["truth"]
        eps = [r["eps"] for r in next(iter(jobs.values()))["robustness"]]
        lines += [f"### {process}", ""]
        head = "| job | I(x; z) | " + " | ".join(f"KL at ε={e:g} (truth, same δ)" for e in eps)
        head += " | de-noising error at the largest ε | outlier AUROC | MIG "
        head += "| DCI: D / C / I (test R² or accuracy) |"
        lines += [head, "|---" * (6 + len(eps)) + "|"]
        for job, rec in sorted(jobs.items()):
            cells = [
                with_error(rec["total_mutual_information"]["mean"], rec["total_mutual_information"]["stderr"])
            ]
            for r in rec["robustness"]:
                ideal = f" ({number(sum(r['truth_kl']) / len(r['truth_kl']))})" if "truth_kl" in r else ""
                cells.append(f"{with_error(r['mean'], r['stderr'])}{ideal}")
            d = rec["robustness"][-1]["denoise_error"]
            cells.append(f"{with_error(d['mean'], d['stderr'])} (clean {number(d['clean_mean'])})")
            cells.append(with_error(rec["auroc"]["auroc"], rec["auroc"]["stderr"]) if "auroc" in rec else "—")
            cells.append(with_error(rec["mig"]["mig"], rec["mig"]["stderr"]) if "mig" in rec else "—")
            cells.append(_dci_cell(rec.get("dci")))
            lines.append(f"| {job} | " + " | ".join(cells) + " |")
        truth_cells = ["—"] + ["—"] * len(eps) + ["—"]
        truth_cells.append(
            with_error(truth["auroc"]["auroc"], truth["auroc"]["stderr"]) if "auroc" in truth else "—"
        )
        truth_cells.append(with_error(truth["mig"]["mig"], truth["mig"]["stderr"]) if "mig" in truth else "—")
        truth_cells.append(_dci_cell(truth.get("dci")))
        lines.append("| the truth's exact posterior | " + " | ".join(truth_cells) + " |")
        lines.append("")
        against = block.get("against_mfg")
        if against:
            lines.append(f"Against the MFG-VAE ({block['mfg']}), each fit minus it:")
            lines.append("")
            for job, row in sorted(against.items()):
                parts = []
                for key, diff in row.items():
                    if key.startswith("robustness_eps"):
                        parts.append(
                            f"KL under attack at ε={key[len('robustness_eps') :]}: {_against_mfg(diff, True)}"
                        )
                    elif key == "auroc":
                        parts.append(f"outlier AUROC: {_against_mfg(diff, False)}")
                    elif key == "mig":
                        parts.append(f"MIG: {_against_mfg(diff, False)}")
                who = "the truth's exact posterior" if job == "truth" else job
                lines.append(f"- {who}: " + "; ".join(parts) + ".")
            lines.append("")
        lines += [f"![robustness of {process}](figures/robustness-{process}.png)", ""]
        lines += _noise_lines(process, jobs)
    return lines


def _data_downstream_lines(name: str, block: dict) -> list[str]:
    """The downstream table of a user's data set: compression, self-consistency and the
    representation's robustness curve, each fit against the plain VAE."""
    jobs = block["jobs"]
    eps = next((rec["probe"]["eps"] for rec in jobs.values() if "probe" in rec), [])
    lines = [
        f"### {name}",
        "",
        "Self-consistency: ‖z − m(μθ(z))‖ over prior draws z, m the encoder mean and μθ the "
        "decoder's mean (Cemgil et al. 2020; 0: the encoder inverts its own decoder). "
        + ("Accuracy: a linear classifier on the encoder means, on clean test points and under "
           "the encoder attack of radius ε (ℓ∞, the perturbation that moves the mean furthest)."
           if eps else ""),
        "",
    ]  # fmt: skip
    head = "| job | I(x; z) | self-consistency |" + "".join(f" accuracy at ε={e:g} |" for e in eps)
    lines += [head, "|---" * (3 + len(eps)) + "|"]
    for job, rec in sorted(jobs.items()):
        mi, cons = rec["total_mutual_information"], rec["consistency"]
        cells = [with_error(mi["mean"], mi["stderr"]), with_error(cons["mean"], cons["stderr"])]
        if "probe" in rec:
            cells += [with_error(a, s) for a, s in zip(rec["probe"]["accuracy"], rec["probe"]["stderr"])]
        else:
            cells += ["—"] * len(eps)
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    lines.append("")
    against = block.get("against_baseline")
    if against:
        lines += [f"Against the plain VAE ({block['baseline']}), each fit minus it, paired:", ""]
        for job, row in sorted(against.items()):
            parts = [f"self-consistency {_against_mfg(row['consistency'], True)}"]
            parts += [
                f"accuracy at ε={key[len('accuracy_eps') :]} {_against_mfg(diff, False)}"
                for key, diff in row.items()
                if key.startswith("accuracy_eps")
            ]
            lines.append(f"- {job}: " + "; ".join(parts) + ".")
        lines.append("")
    if eps:
        lines += [f"![representation under attack, {name}](figures/representation-{name}.png)", ""]
    return lines


def _noise_lines(process: str, jobs: dict) -> list[str]:
    """Signal and noise: each job's learned σ against the truth's (``--learn-noise``)."""
    learned = {job: rec["noise"] for job, rec in sorted(jobs.items()) if "noise" in rec}
    if not learned:
        return []
    truth = next(iter(learned.values()))["truth"]
    words = {
        "less": "below: noise learned as signal",
        "greater": "above: signal learned as noise",
        "tie": "tie",
    }
    lines = [
        f"Signal and noise: the learned σ against the truth's ({number(truth)}); the selected "
        "fit's, and the mean ± standard error over the restarts (a mean within two standard "
        "errors of the truth's is a tie).",
        "",
        "| job | learned σ | over restarts | learned / truth | against the truth |",
        "|---|---|---|---|---|",
    ]
    for job, rec in learned.items():
        spread, side = "—", "—"
        if rec["mean"] is not None and rec["stderr"] is not None:
            spread = f"{with_error(rec['mean'], rec['stderr'])} ({len(rec['restart_values'])})"
            side = words[verdict({"mean": rec["mean"] - truth, "stderr": rec["stderr"]})]
        lines.append(f"| {job} | {number(rec['selected'])} | {spread} | {number(rec['ratio'])} | {side} |")
    lines += ["", f"![learned noise of {process}](figures/noise-{process}.png)", ""]
    return lines


def section_semi_supervised(res: Results) -> list[str]:
    jobs = [r for r in res.jobs if "counterfactual_error_model" in r["metrics"]]
    if not jobs:
        return []
    lines = [
        "## Semi-supervised (M2)",
        "",
        "The M2 model of Kingma et al. (2014) with q(y|x) q(z|x,y), trained on the labelled share "
        "of the points (`--labelled-fraction`). Separation: the mean distance between the two "
        "learned class curves f(z, 0) and f(z, 1) over z ~ p(z), as a share of the truth's (near 0: "
        "the curves collapsed onto each other). Counterfactual error: the distance between the "
        "learned and the true counterfactual of each test point (its point had it been of the "
        "other class), z inferred by the learned model's exact posterior (and by its guide). MLEO "
        "of p(x) and of each class's p(x|y), exact by quadrature; accuracy of q(y|x) against the "
        "truth's own (Bayes) accuracy.",
        "",
        "| job | separation / truth | counterfactual error (model) | (guide) | MLEO p(x) "
        "| MLEO p(x \\| y=0) / p(x \\| y=1) | accuracy (Bayes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in jobs:
        m = r["metrics"]
        reads_y = r["config"].get("guide_options", {}).get("label_in_encoder", True)
        encoder = "" if reads_y else " (q(z \\| x): the encoder does not read y)"  # \\|: a pipe in a cell
        lines.append(
            f"| {r['job']}{encoder} "
            f"| {number(m['separation_ratio'], 2)} "
            f"| {with_error(m['counterfactual_error_model'], m['counterfactual_error_model_stderr'])} "
            f"| {with_error(m['counterfactual_error_guide'], m['counterfactual_error_guide_stderr'])} "
            f"| {with_error(m['mleo'], m['mleo_stderr'])} "
            f"| {number(m['mleo_class0'])} / {number(m['mleo_class1'])} "
            f"| {with_error(m['accuracy'], m['accuracy_stderr'])} ({number(m['bayes_accuracy'])}) |"
        )
    lines.append("")
    mfg = next(
        (r for r in jobs if (r["config"]["guide"], r["config"]["objective"]) == ("mean_field", "elbo")), None
    )
    if mfg is not None and mfg["job"] in res.points:
        lines += [f"Counterfactual error against the MFG M2 ({mfg['job']}), paired over the test points:", ""]
        for r in jobs:
            if r is mfg or r["job"] not in res.points:
                continue
            d = paired_difference(
                _per_point(res.points, mfg, "counterfactual_error"),
                _per_point(res.points, r, "counterfactual_error"),
            )
            side = verdict(d)
            words = {"greater": "the MFG M2's is larger", "less": "the MFG M2's is smaller", "tie": "a tie"}[
                side
            ]
            lines.append(f"- {r['job']}: MFG M2 minus it {with_error(d['mean'], d['stderr'])} ({words}).")
        lines.append("")
    return lines


def section_regression(res: Results) -> list[str]:
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
    for process, record in res.regression.items():
        lines += [
            f"### {process}",
            "",
            "| method | seconds | λ | " + " | ".join(label for _, label in columns) + " |",
            "|---" * (3 + len(columns)) + "|",
        ]
        for row in record["rows"]:
            cells = []
            for key, _ in columns:
                v = row.get(key)
                cells.append(with_error(v["value"], v["stderr"]) if isinstance(v, dict) else "—")
            lam = "—" if row.get("lam") is None else f"{row['lam']:g}"
            seconds = "—" if row.get("seconds") is None else f"{row['seconds']:.0f}"
            lines.append(f"| {row['method']} | {seconds} | {lam} | " + " | ".join(cells) + " |")
        lines.append("")
        first = next((r for r in record["rows"] if r["method"] != "truth"), None)
        for row in record["rows"]:
            diff = row.get("paired_diff")
            if row is first or row["method"] == "truth" or not isinstance(diff, dict):
                continue
            d = {"mean": diff["value"], "stderr": diff["stderr"]}
            word = {"greater": "higher", "less": "lower", "tie": "a tie, inside two standard errors"}[
                verdict(d)
            ]
            lines.append(
                f"- {row['method']} against {first['method']}: test log-likelihood "
                f"{with_error(d['mean'], d['stderr'])} ({word})."
            )
        if record.get("figure"):
            lines += ["", f"![predictive bands of {process}]({record['figure']})"]
        lines.append("")
    return lines


def section_figures(res: Results) -> list[str]:
    lines = ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in res.figures]
    for r in res.jobs:
        for f in r["figures"]:
            lines.append(f"![{r['job']} {Path(f).stem}](jobs/{r['job']}/{f})")
    return lines + [""]


SECTIONS = (
    section_header,
    section_data,
    section_results,
    section_training,
    section_table1,
    section_orderings,
    section_guides,
    section_choosing_k,
    section_reference_quality,
    section_posterior_bias,
    section_diagnosis,
    section_failure_map,
    section_libi,
    section_semi_supervised,
    section_downstream,
    section_regression,
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
    checks = table1_checks(res.jobs, res.points)
    if checks:
        parts.append(checks_markdown(checks))
    if res.has_posterior:
        parts += [posterior_table(res.posterior), diagnosis_markdown(res.diagnosis)]
    parts.append(f"report: {folder.root / 'report.md'}")
    return "\n".join(parts)
