"""Stage ``diagnosis``: which failure of Yacoby et al. (2020) each process shows.

The MFG-VAE is the job with the mean-field guide and the ELBO at the true K. The fit it is
compared with is fixed in advance, not chosen by the statistic it is then tested on: the first
job at the true K in :data:`COMPARATORS` (the IWAE-trained mean-field model, as in the paper;
else the richest family). The conditions and the verdict are decided by
:func:`pyrofail.analysis.diagnose.conclude`.

A run that sweeps the truth's noise scale (``--truth-noise``) also gets the failure map: per
process and σ, the MLEO of the MFG-VAE and of its comparator, the share of hard points and the
verdict, as a table and a figure.

Reads: ``truth/<process>/hardness.json``, ``jobs/<job>/{metrics.json, posterior.json}``.
Writes: ``diagnosis.json`` (``{process: verdict}``); with a noise sweep, ``failure_map.json``
(``{model: rows}``) and ``figures/failure-map-<model>.png``.
"""

from __future__ import annotations

from pyrofail.analysis.diagnose import conclude, evidence
from pyrofail.analysis.figures.plots import failure_map_figure
from pyrofail.runs import atomic_write_json, read_json
from pyrofail.stages.folder import RunFolder, truth_of
from pyrofail.stages.references import settings_of

__all__ = ["COMPARATORS", "diagnose_process", "diagnose_without_truth", "run"]

# (guide, objective) of the fit the MFG-VAE is compared with, in order of preference
COMPARATORS = (
    ("mean_field", "iwae"),
    ("flow", "iwae"),
    ("flow", "elbo"),
    ("mixture", "iwae"),
    ("mixture", "elbo"),
    ("full_rank", "iwae"),
    ("full_rank", "elbo"),
)


def _side(job: dict, record: dict, usable: list[bool]) -> dict:
    """The per-point inputs of the evidence for one job, at the usable points only."""
    truth_side = record.get("truth") or {}
    shift = (truth_side.get("per_point") or {}).get("posterior_shift")

    def kept(values):
        return None if values is None else [v for v, ok in zip(values, usable) if ok]

    return {
        "label": record["job"],
        "kl": kept(record["best_mean_field"]["per_point"]),
        "mleo": kept(record["mleo"]["per_point"]),
        "pmo_gap": kept(record["model"]["per_point"]["pmo_gap"]),
        "posterior_shift": kept(shift),
        "elbo_stderr": job["metrics"]["test_neg_elbo_stderr"],
    }


def _usable(*records: dict) -> list[bool]:
    """Points every record's references pass the quality gate at (all, for older records)."""
    masks = [r["usable"] for r in records if r is not None and "usable" in r]
    n = len(records[0]["model"]["per_point"]["pmo_gap"])
    return [all(m[i] for m in masks) for i in range(n)]


def diagnose_process(
    k_true: int,
    hardness: dict,
    jobs: list[dict],
    records: dict,
    learn_noise: bool,
    reference: str = "the ground truth",
) -> dict:
    """The verdict for one process from its truth's KL* (``hardness``), its finished jobs and
    their posterior records (``{job: posterior.json}``)."""
    at_k = {
        (j["config"]["guide"], j["config"]["objective"]): j
        for j in jobs
        if j["config"]["latent_dim"] == k_true
        and (records.get(j["job"]) or {}).get("best_mean_field") is not None
    }
    mfg = at_k.get(("mean_field", "elbo"))
    if mfg is None:
        return {
            "failure": "not diagnosed",
            "sentences": [
                f"Not diagnosed: the diagnosis needs a job with the mean_field guide and the elbo "
                f"objective at the true K = {k_true}."
            ],
        }
    other = next((at_k[c] for c in COMPARATORS if c in at_k), None)
    usable = _usable(records[mfg["job"]], None if other is None else records[other["job"]])
    richer = None if other is None else _side(other, records[other["job"]], usable)
    truth_kl = [v for v, ok in zip(hardness["best_mean_field"]["per_point"], usable) if ok]
    if not truth_kl:
        return {
            "failure": "not diagnosed",
            "sentences": ["Not diagnosed: no test point passed the reference quality gate."],
        }
    ev = evidence(truth_kl, _side(mfg, records[mfg["job"]], usable), richer, reference=reference)
    out = conclude(ev, learn_noise=learn_noise)
    excluded = len(usable) - len(truth_kl)
    if excluded:
        out["sentences"].insert(
            0,
            f"{excluded} of the {len(usable)} test points are left out: a reference posterior there "
            "failed its quality gate (the reference-quality table says which checks).",
        )
    out["excluded_points"] = excluded
    return out


def diagnose_without_truth(k: int, jobs: list[dict], records: dict, learn_noise: bool) -> dict:
    r"""The verdict at latent dimension ``k`` on a user's data: the best-fitting model at ``k``
    (highest test log p(x)) stands in for the ground truth — its KL* for the truth's, and
    :math:`\log p_{best}(x) - \log p_\theta(x)` at the analysis points for the MLEO."""
    at_k = [
        j
        for j in jobs
        if j["config"]["latent_dim"] == k and (records.get(j["job"]) or {}).get("best_mean_field")
    ]
    if not at_k:
        return {
            "failure": "not diagnosed",
            "sentences": [f"Not diagnosed: no reference posteriors at K = {k}."],
        }
    best = min(at_k, key=lambda j: (j["metrics"]["test_neg_log_px"], j["job"]))
    best_lp = records[best["job"]]["model"]["per_point"]["log_px"]

    def proxied(job):
        record = records[job["job"]]
        lp = record["model"]["per_point"]["log_px"]
        return {**record, "mleo": {"per_point": [b - v for b, v in zip(best_lp, lp)]}}

    proxies = {j["job"]: proxied(j) for j in at_k}
    hardness = {"best_mean_field": records[best["job"]]["best_mean_field"]}
    verdict = diagnose_process(k, hardness, at_k, proxies, learn_noise, reference="the best-fitting model")
    verdict["reference_job"] = best["job"]
    verdict["sentences"].insert(
        0,
        f"There is no ground truth: the best-fitting model at K = {k}, {best['job']} (the highest "
        "test log p(x)), stands in for it; MLEO here is its log p(x) minus the fit's, per point.",
    )
    return verdict


def run(folder: RunFolder) -> None:
    if settings_of(folder.options) is None:
        return
    out = {}
    learn_noise = folder.options.get("learn_noise") is True  # "above_true_k": not at the true K
    for name, group in folder.by_process().items():
        records = {}
        for r in group:
            path = folder.job_dir(r["job"]) / "posterior.json"
            if path.exists():
                records[r["job"]] = read_json(path)
        truth = truth_of(group[0]["config"])
        if not records:
            continue  # no references (the semi-supervised model): nothing to diagnose here
        if truth is None:
            for k in sorted({r["config"]["latent_dim"] for r in group}):
                out[f"{name} K={k}"] = diagnose_without_truth(k, group, records, learn_noise)
            continue
        hardness = read_json(folder.truth_dir(name) / "hardness.json")
        out[name] = diagnose_process(truth.latent_dim, hardness, group, records, learn_noise)
    atomic_write_json(folder.root / "diagnosis.json", out)
    maps = failure_maps(folder, out)
    if maps:
        atomic_write_json(folder.root / "failure_map.json", maps)
        for model, rows in maps.items():
            failure_map_figure(folder.figures / f"failure-map-{model}.png", model, rows)


def failure_maps(folder: RunFolder, verdicts: dict) -> dict:
    """``{model: rows}`` for every model run at more than one noise scale of its truth."""
    by_model: dict[str, list[dict]] = {}
    for name, group in folder.by_process().items():
        ev = (verdicts.get(name) or {}).get("evidence")
        if ev is None:
            continue
        sigma = float(truth_of(group[0]["config"]).noise_scale.reshape(-1)[0])
        mf, other = ev["mean_field"], ev["richer"]
        row = {
            "process": name,
            "sigma": sigma,
            "mleo_mfg": mf["mleo"],
            "mleo_mfg_se": mf["mleo_stderr"],
            "mleo_other": None if other is None else other["mleo"],
            "mleo_other_se": None if other is None else other["mleo_stderr"],
            "other": None if other is None else other["label"].removeprefix(f"{name}-"),
            "px_cost": ev["px_cost"],
            "share_hard": ev["truth"]["share_hard"],
            "cx1_share": ev["cx1_share"],
            "pmo_gap": mf["pmo_gap"],
            "failure": verdicts[name]["failure"],
        }
        by_model.setdefault(group[0]["config"]["model"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["sigma"]) for m, rows in by_model.items() if len(rows) > 1}
