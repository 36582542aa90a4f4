"""The report's header, the data a run was fitted to, and the fits themselves."""

from __future__ import annotations

from pyrofail.numbers import estimate_text as est
from pyrofail.numbers import number
from pyrofail.records.data import DataRecord
from pyrofail.report.read import RunRecords

__all__ = ["data_section", "header", "results_section", "results_table", "training_section"]

RESULTS_COLUMNS = (
    "All values are nats per point, means over the test points ± their standard error (the spread "
    "over the points divided by √N, with the Monte Carlo error of the estimate added in "
    "quadrature); lower is better except for I. **test −ELBO**: the negative ELBO (100 guide draws "
    "per point). **test −bound**: the objective the fit was trained with, evaluated on the test "
    "points (the ELBO, or the IWAE bound with the training particle count). **test −log p(x)**: "
    "the learned model's marginal likelihood — `grid`: exact quadrature over the latent space "
    "(K ≤ 2, whatever the data's dimension), `isN`: importance sampling from the guide with N "
    "draws per point, with the points whose Pareto k̂ exceeds 0.7 counted in brackets. **PMO "
    "gap**: −ELBO − (−log p(x)) = E KL(q(z|x) ‖ p_θ(z|x)), the price of the guide. **MLEO**: "
    "KL(p_GT(x) ‖ p_θ(x)) = mean of log p_GT(x) − log p_θ(x) over the same test points, how far "
    "the learned p(x) is from the truth's. **avg I(x; z_i)**: the encoder's mutual information "
    "per latent dimension, the aggregate posterior taken over the test points. **selected "
    "restart**: which of the restarts was kept (the best validation objective) and how it "
    "started (`ground_truth`: decoder pre-fitted to the true f, encoder warmed up on it; "
    "`random`). **diverged**: restarts whose loss became NaN or infinite (frozen, never selected)."
)


def header(res: RunRecords) -> list[str]:
    o = res.options
    if res.on_data:
        what = f"your data `{o.data}`"
        sizes = "the split of the Data section"
    else:
        noise = f" at σ = {', '.join(map(str, o.truth_noise))}" if o.truth_noise else ""
        what = f"{', '.join(o.process)}{noise}"
        sizes = f"{o.n_train}/{o.n_val}/{o.n_test} train/validation/test points"
    procedures = o.procedure or ["joint"]
    return [
        f"# pyrofail report: {what}",
        "",
        f"Preset `{o.preset}`; K {', '.join(map(str, o.latent_dim))}; guides "
        f"{', '.join(o.guide)}; objectives {', '.join(o.objective)}; procedures "
        f"{', '.join(procedures)}; {o.restarts} restarts × {o.steps} steps, seed {o.seed}; "
        f"{sizes}.",
        "",
    ]


def _split_text(data: DataRecord) -> str:
    """How the rows were split: one seeded split, or the folds of cross-fitting."""
    folds = data.folds
    if folds < 2:
        sizes = data.sizes
        return (
            f"{sizes.train}/{sizes.val}/{sizes.test} train/validation/test rows "
            "(a seeded split, `data.json` lists them)"
        )
    parts = data.rows
    total = sum(len(p.test) for p in parts)
    train, val = _span(len(p.train) for p in parts), _span(len(p.val) for p in parts)
    return (
        f"{folds}-fold cross-fitting: each fit is trained {folds} times, on {train} "
        f"training and {val} validation rows, and tested on the fold left "
        f"out, so each of the {total} rows is a test point once and the tables pool the folds "
        "(`data.json` lists them)"
    )


def _span(values) -> str:
    """``"265"`` or ``"264–265"``: the range of fold sizes."""
    v = sorted(set(values))
    return str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"


def data_section(res: RunRecords) -> list[str]:
    data = res.data
    if data is None:
        return []
    std = data.standardizer
    return [
        "## Data",
        "",
        f"`{data.source}`: {len(data.features)} features; {_split_text(data)}; "
        + (
            "standardised with the training rows' mean and sd (in `data.json`). "
            if std
            else "in its own units. "
        )
        + "There is no ground truth: at each K the best-fitting model stands in for it in the "
        "diagnosis. log p(x) is exact (quadrature over the latent space) at K ≤ 2 and importance-"
        "sampled from each guide at K > 2.",
        "",
    ]


def _log_px_cell(m) -> str:
    if m.test_neg_log_px is None:
        return "—"
    bad = f", {m.pareto_k_bad} k̂ > 0.7" if m.pareto_k_bad else ""
    return f"{est(m.test_neg_log_px)} ({m.log_px_method}{bad})"


def results_table(res: RunRecords) -> str:
    """One row per job with the foundation metrics."""
    head = (
        "| job | test −ELBO | test −bound | test −log p(x) | PMO gap | MLEO | avg I(x; z_i) "
        "| selected restart (init) | diverged |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in res.jobs:
        m = r.metrics
        rows.append(
            f"| {r.job} | {est(m.test_neg_elbo)} | {est(m.test_neg_bound)} | {_log_px_cell(m)} "
            f"| {est(m.pmo_gap)} | {est(m.mleo)} | {est(m.avg_mutual_information)} "
            f"| {r.selected_restart} ({r.selected.init}) | {r.diverged}/{len(r.restarts)} |"
        )
    return head + "\n".join(rows) + "\n"


def results_section(res: RunRecords) -> list[str]:
    lines = ["## The fits", "", RESULTS_COLUMNS, "", results_table(res)]
    for job, reason in res.failed.items():
        lines += [f"**{job} failed**: {reason}", ""]
    return lines


def training_section(res: RunRecords) -> list[str]:
    """What each fit trained on: mixture guides train on stratified estimators, which may cost
    more model evaluations per point than the plain estimator the other families use."""
    rows = [
        f"| {r.job} | {r.metrics.trained_on} | {est(r.metrics.test_neg_bound)} "
        f"| {est(r.metrics.test_neg_training_bound)} | {number(r.seconds, 0)} |"
        for r in res.jobs
        if r.metrics.trained_on
    ]
    if not rows:
        return []
    return [
        "## What each fit trained on",
        "",
        "test −bound: the objective's plain estimator on the test points, the same for every family "
        "(comparable across guides); test −training bound: the estimator the fit was trained with "
        "(for mixture guides the stratified one, Morningstar et al. 2021); with `--matched-budget` "
        "the stratified IWAE splits its draws over the components; seconds: the fit and its "
        "evaluation, wall clock.",
        "",
        "| job | trained on | test −bound | test −training bound | seconds |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
