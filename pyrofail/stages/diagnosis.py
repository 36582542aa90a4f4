"""Stage ``diagnosis``: which failure of Yacoby et al. (2020) each process shows.

The MFG-VAE is the job with the mean-field guide and the ELBO at the true K; the richer fit is,
among the other jobs at the true K, the one with the best p(x) (lowest MLEO). The conditions
and the verdict are decided by :func:`pyrofail.analysis.diagnose.conclude`.

Reads: ``truth/<model>/hardness.json``, ``jobs/<job>/{config.json, posterior.json}``.
Writes: ``diagnosis.json`` (``{model: verdict}``).
"""

from __future__ import annotations

from pyrofail import zoo
from pyrofail.analysis.diagnose import conclude, evidence
from pyrofail.runs import atomic_write_json, read_json
from pyrofail.stages.folder import RunFolder
from pyrofail.stages.references import settings_of

__all__ = ["diagnose_process", "run"]


def _side(record: dict) -> dict:
    truth_side = record.get("truth") or {}
    return {
        "label": record["job"],
        "kl": record["best_mean_field"]["per_point"],
        "mleo": record["mleo"]["per_point"],
        "pmo_gap": record["model"]["per_point"]["pmo_gap"],
        "posterior_shift": (truth_side.get("per_point") or {}).get("posterior_shift"),
    }


def diagnose_process(
    k_true: int, hardness: dict, records: list[dict], configs: dict, learn_noise: bool
) -> dict:
    """The verdict for one process from its truth's KL* and its jobs' posterior records."""
    usable = [
        r
        for r in records
        if configs[r["job"]]["latent_dim"] == k_true and r.get("best_mean_field") is not None
    ]
    mfg = [
        r
        for r in usable
        if configs[r["job"]]["guide"] == "mean_field" and configs[r["job"]]["objective"] == "elbo"
    ]
    if not mfg:
        return {
            "failure": "not diagnosed",
            "sentences": [
                f"Not diagnosed: the diagnosis needs a job with the mean_field guide and the elbo "
                f"objective at the true K = {k_true}."
            ],
        }
    others = sorted((r for r in usable if r is not mfg[0]), key=lambda r: (r["mleo"]["mean"], r["job"]))
    richer = _side(others[0]) if others else None
    truth_kl = hardness["best_mean_field"]["per_point"]
    return conclude(evidence(truth_kl, _side(mfg[0]), richer), learn_noise=learn_noise)


def run(folder: RunFolder) -> None:
    if settings_of(folder.options) is None:
        return
    out = {}
    for name, group in folder.by_model().items():
        hardness = read_json(folder.truth_dir(name) / "hardness.json")
        records = [read_json(folder.job_dir(r["job"]) / "posterior.json") for r in group]
        configs = {r["job"]: r["config"] for r in group}
        k_true = zoo.model(name).latent_dim
        out[name] = diagnose_process(
            k_true, hardness, records, configs, bool(folder.options.get("learn_noise"))
        )
    atomic_write_json(folder.root / "diagnosis.json", out)
