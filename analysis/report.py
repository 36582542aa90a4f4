"""Markdown tables of a run: one row per job, and the Table 1 reproduction beside the paper."""

from __future__ import annotations

NOISE_NATS = 0.05  # "within noise": about the restart-to-restart spread the paper reports
TIE_NATS = 5e-4  # below the three decimals the report prints


def _fmt(value, err=None, digits: int = 3) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    if err is not None and err > 0:
        text += f" ± {err:.{digits}f}"
    return text


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
            f"| {r['job']} | {_fmt(m['test_neg_elbo'], m['test_neg_elbo_stderr'])} "
            f"| {_fmt(m['test_neg_bound'], m['test_neg_bound_stderr'])} "
            f"| {_fmt(m['test_neg_log_px'], m['test_neg_log_px_stderr'])} ({m['log_px_method']}) "
            f"| {_fmt(m['pmo_gap'])} | {_fmt(m.get('mleo'))} "
            f"| {_fmt(m['avg_mutual_information'])} "
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
                cells.append(f"{_fmt(value)}{ref_text}")
            rows.append(f"| {label} {name} | " + " | ".join(cells) + " |")
        cells = []
        for m, k in cols:
            ours = idx.get((m, k, obj))
            cells.append(_fmt(ours["test_neg_log_px"]) if ours else "—")
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


# ----------------------------------------------------------------------------------------
# posterior bias and diagnosis (the posterior stage of a run)


def _num(value, digits: int = 3) -> str:
    """A number from a record (JSON turns infinities into "inf"/"-inf" strings)."""
    if value is None:
        return "—"
    v = float(value)
    if v != v:
        return "—"
    if v in (float("inf"), float("-inf")):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}f}"


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
            f"| {job} | {rec['reference_method']} | {rec['n_points']} | {_num(m['elbo'])} "
            f"| {_num(m['log_px'])} | {_num(m['pmo_gap'])} | {_num(m['forward_kl'])} "
            f"| {_num(best['mean'] if best else None)} | {_num(m['mode_mass_error'])} "
            f"| {_num(m['energy_distance'])} | {_num(m['pareto_k_median'], 2)} "
            f"({_num(m['pareto_k_bad_share'], 2)} > {_num(m['pareto_k_threshold'], 2)}) |"
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
            f"| {job} | {_num(t.get('pmo_gap'))} | {_num(t.get('forward_kl'))} "
            f"| {_num(t.get('mode_mass_error'))} | {_num(t.get('energy_distance'))} "
            f"| {_num(t.get('posterior_shift'))} | {_fmt(rec['mleo']['mean'], rec['mleo']['stderr'])} |"
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
