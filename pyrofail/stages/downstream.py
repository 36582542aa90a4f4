"""Stage ``downstream``: what a failure costs in the tasks VAEs are used for (``--downstream``).

Per job, on its test data (Yacoby, Pan & Doshi-Velez 2020, Section 6):

* **compression**: the total :math:`I(x; z)` and its share per latent dimension (the K each
  criterion would choose is in the report's "which latent dimension" table);
* **signal and noise**: the learned σ against the truth's (with ``--learn-noise``), over K
  (:func:`learned_noise`; ``figures/noise-<process>.png``);
* **disentanglement** (processes with K ≥ 2 factors): MIG and DCI of the encoder means
  :math:`\\mathbb E_q[z \\mid x]` about the true factors
  (:mod:`pyrofail.analysis.downstream.disentanglement`);
* **adversarial robustness**: the worst :math:`\\ell_\\infty` perturbation of each test point
  for the encoder, KL(q(z|x) ‖ q(z|x + δ)) over an ε sweep, the truth's exact posterior shift
  under the same δ (how sensitive an ideal encoder is), and the de-noising attack
  (:mod:`pyrofail.analysis.downstream.attacks`);
* **outlier detection**: the AUROC of log p_θ(x) between held-out points and off-manifold
  points of the truth (:mod:`pyrofail.analysis.downstream.outliers`), against the truth's own.

Per process, the truth's ceilings (its posterior means' MIG/DCI, its AUROC) and every job
against the MFG-VAE, with paired standard errors.

Reads: ``jobs/<job>/{config.json, model.pt, guide.pt}``. Writes: ``jobs/<job>/downstream.json``,
``truth/<process>/downstream.json``, ``downstream.json``, ``figures/robustness-<process>.png``,
``figures/noise-<process>.png`` (with ``--learn-noise``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pyrofail.analysis import metrics
from pyrofail.analysis.downstream import attacks, disentanglement, outliers, self_consistency
from pyrofail.analysis.figures.plots import noise_figure, probe_figure, robustness_figure
from pyrofail.analysis.reference import grid
from pyrofail.analysis.uncertainty import paired_difference
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.folder import job_data, job_id, load_fit, process_id, truth_of
from pyrofail.runs import atomic_write_json, read_json
from pyrofail.stages.pool import run_tasks

__all__ = ["EPSILONS", "run"]

EPSILONS = (0.05, 0.1, 0.2)  # attack radii, in the data's units (the zoo's data span about 2)
# the representation's attack radii on a user's data set (ε = 0: clean accuracy; Cemgil et al.
# 2020 attack digits' pixels in [0, 1] up to 0.3)
PROBE_EPSILONS = (0.0, 0.05, 0.1, 0.2, 0.3)
CONSISTENCY_POINTS = 1000
ATTACK_POINTS = 200  # test points attacked per job and radius
ATTACK_STEPS = 50
OUTLIERS = 500  # off-manifold points per process


def _codes(guide, x: torch.Tensor) -> torch.Tensor:
    """The encoder means :math:`\\mathbb E_q[z \\mid x]` (exact, or from 256 draws)."""
    q = guide.distribution(x)
    try:
        return q.mean.detach()
    except NotImplementedError:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return q.sample((256,)).mean(0)


def load_job(folder: Path):
    """``(config, truth, model, guide)`` of a finished job."""
    record = RunFolder.read(JobRecord, Path(folder) / "metrics.json")
    model, guide = load_fit(folder, record.build)
    return record.config, truth_of(record.config), model, guide


def _current(path: Path, key: dict):
    if path.exists():
        record = read_json(path)
        if record.get("key") == key:
            return record
    return None


def truth_tasks(config: dict, folder: Path, seed: int) -> dict:
    """The truth's own answers: its exact posterior means' MIG/DCI (K ≤ 2), its AUROC, and the
    off-manifold points every job is scored on."""
    key = {"process": process_id(config), "seed": seed, "n_test": config["n_test"]}
    done = folder / "downstream.json"
    record = _current(done, key)
    if record is not None:
        return record
    truth, splits = job_data(config)
    test = splits.test
    out = {"key": key}
    if truth.latent_dim <= grid.MAX_K:
        means = grid.grid_posterior(truth, test.x.double()).mean
        if truth.latent_dim >= 2:
            out["mig"] = _strip(disentanglement.mig(means, test.z, seed=seed))
            out["dci"] = _strip(disentanglement.dci(means, test.z, bootstrap=5, seed=seed))
        away = outliers.off_manifold(truth, OUTLIERS, seed=seed, reference=splits.val.x)
        out["outliers_x"] = away["x"].tolist()
        inside = outliers.outlier_scores(truth, test.x)["per_point"]
        outside = outliers.outlier_scores(truth, away["x"])["per_point"]
        out["auroc"] = outliers.auroc(inside, outside)
    atomic_write_json(done, out)
    return out


def _strip(result: dict) -> dict:
    """A metric's result as JSON: tensors and arrays become lists."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}


def _job_record(folder: Path, seed: int, epsilons) -> tuple[dict, dict | None]:
    """``(key, record)``: a job's downstream key and its saved record if that is current
    (``None`` otherwise). "tasks" names this version of the record, so that a resumed run
    recomputes an older one."""
    key = {"job": job_id(read_json(folder / "config.json")), "seed": seed, "epsilons": list(epsilons)}
    key["tasks"] = 2
    return key, _current(folder / "downstream.json", key)


def job_tasks(folder: Path, truth_folder: Path, seed: int) -> dict:
    """Every downstream task for one job (``downstream.json``)."""
    folder = Path(folder)
    key, record = _job_record(folder, seed, EPSILONS)
    if record is not None:
        return record
    config, truth, model, guide = load_job(folder)
    _, splits = job_data(config)
    test = splits.test
    x = test.x
    out = {"key": key, "job": job_id(config)}
    out["total_mutual_information"] = metrics.total_mutual_information(guide, x, seed=seed)
    if getattr(model, "learn_noise", False) and truth is not None:
        restarts = RunFolder.read(JobRecord, folder / "metrics.json").restarts
        out["noise"] = learned_noise(model, truth, [vars(r) for r in restarts])
    if truth.latent_dim >= 2 and test.z is not None:
        codes = _codes(guide, x)
        out["mig"] = _strip(disentanglement.mig(codes, test.z, seed=seed))
        out["dci"] = _strip(disentanglement.dci(codes, test.z, bootstrap=5, seed=seed))
    xa = x[:ATTACK_POINTS]
    out["robustness"] = []
    for eps in EPSILONS:
        attack = attacks.attack_encoder(guide, xa, eps, norm="linf", steps=ATTACK_STEPS, seed=seed)
        row = {
            "eps": eps,
            "kl": attack["divergence"].tolist(),
            "mean": attack["mean"],
            "stderr": attack["stderr"],
        }
        if truth.latent_dim <= grid.MAX_K:
            ideal = attacks.posterior_shift(truth, xa, attack["x_adv"])
            row["truth_kl"] = ideal["per_point"].tolist()
        denoise = attacks.attack_denoiser(model, guide, xa, eps, norm="linf", steps=ATTACK_STEPS, seed=seed)
        row["denoise_error"] = {k: denoise[k] for k in ("mean", "stderr", "clean_mean", "clean_stderr")}
        out["robustness"].append(row)
    truth_record = read_json(truth_folder / "downstream.json")
    if "outliers_x" in truth_record:
        away = torch.tensor(truth_record["outliers_x"], dtype=x.dtype)
        inside = outliers.outlier_scores(model, x, guide=guide)["per_point"]
        outside = outliers.outlier_scores(model, away, guide=guide)["per_point"]
        out["auroc"] = outliers.auroc(inside, outside)
    atomic_write_json(folder / "downstream.json", out)
    return out


def data_tasks(folder: Path, seed: int) -> dict:
    """The downstream tasks on a user's data set (no ground truth): compression, the
    self-consistency of the encoder for its own decoder, and with labels the robustness of the
    representation — a linear classifier on the encoder means, its test accuracy under the
    encoder attack over :data:`PROBE_EPSILONS` (:mod:`pyrofail.analysis.downstream.self_consistency`)."""
    folder = Path(folder)
    key, record = _job_record(folder, seed, PROBE_EPSILONS)
    if record is not None:
        return record
    config, _, model, guide = load_job(folder)
    _, splits = job_data(config)
    train, test = splits.train, splits.test
    out = {"key": key, "job": job_id(config)}
    out["total_mutual_information"] = metrics.total_mutual_information(guide, test.x, seed=seed)
    cons = self_consistency.consistency(model, guide, CONSISTENCY_POINTS, seed=seed)
    out["consistency"] = {
        "per_point": cons["per_point"].tolist(),
        "mean": cons["mean"],
        "stderr": cons["stderr"],
    }
    if train.y is not None and test.y is not None:
        probe = self_consistency.linear_probe(
            guide, train.x, train.y, test.x, test.y, eps=PROBE_EPSILONS, steps=ATTACK_STEPS, seed=seed
        )
        out["probe"] = {k: probe[k] for k in ("eps", "accuracy", "stderr", "shift", "norm", "objective")}
        out["probe"]["correct"] = probe["correct"].to(torch.int8).tolist()
    atomic_write_json(folder / "downstream.json", out)
    return out


def baseline_job(group: list[dict], k: int) -> str | None:
    """The plain VAE among a process's jobs: the mean-field guide trained jointly by the ELBO at
    latent dimension ``k``, the one every other fit is compared with."""
    for r in group:
        c = r.config
        if (c["guide"], c["objective"], c["latent_dim"], c.get("procedure", "joint")) == (
            "mean_field",
            "elbo",
            k,
            "joint",
        ):
            return r.job
    return None


def compare_data_jobs(records: dict, base: str) -> dict:
    """Every job against the plain VAE ``base`` on a data set: the consistency distance paired
    over the same prior draws (each model draws z from N(0, I) with the same seed) and the
    probe's accuracy at each ε paired over the test points."""
    ref = records[base]
    out = {}
    for job, rec in records.items():
        if job == base:
            continue
        row = {
            "consistency": paired_difference(rec["consistency"]["per_point"], ref["consistency"]["per_point"])
        }
        if "probe" in rec and "probe" in ref:
            for eps, a, b in zip(rec["probe"]["eps"], rec["probe"]["correct"], ref["probe"]["correct"]):
                row[f"accuracy_eps{eps:g}"] = paired_difference([float(v) for v in a], [float(v) for v in b])
        out[job] = row
    return out


def learned_noise(model, truth, restarts: list[dict]) -> dict:
    r"""The learned :math:`\sigma` against the truth's (signal and noise, Yacoby et al. 2020,
    Section 6): the selected fit's, and its mean ± standard error over the restarts that
    finished (each restart's :math:`\sigma` as the fit recorded it). A per-feature
    :math:`\sigma` enters as its mean over features.

    :returns: ``{"selected", "restart_values", "mean", "stderr", "truth", "ratio"}``;
        ``ratio`` = selected / truth (below 1: part of the noise was learned as signal).
    """
    values = [
        float(torch.tensor(r["noise_scale"]).mean())
        for r in restarts
        if r.get("noise_scale") is not None and r.get("validation_objective") is not None
    ]
    selected = float(model.noise_scale.mean())
    true_sigma = float(torch.as_tensor(truth.noise_scale).mean())
    v = torch.tensor(values, dtype=torch.float64)
    stderr = float(v.std() / len(values) ** 0.5) if len(values) > 1 else None
    return {
        "selected": selected,
        "restart_values": values,
        "mean": float(v.mean()) if values else None,
        "stderr": stderr,
        "truth": true_sigma,
        "ratio": selected / true_sigma,
    }


def compare_jobs(records: dict, mfg: str, truth_record: dict) -> dict:
    """Every job against the MFG-VAE ``mfg`` on each task, with paired standard errors: the
    robustness KL per attacked point (the same points), AUROC and disentanglement by their
    own standard errors, and the truth's values beside them."""
    base = records[mfg]
    out = {}
    for job, rec in records.items():
        if job == mfg:
            continue
        row = {}
        for a, b in zip(rec["robustness"], base["robustness"]):
            row[f"robustness_eps{a['eps']:g}"] = paired_difference(a["kl"], b["kl"])
        for task in ("auroc", "mig"):  # each result holds its score under the task's name
            if task in rec and task in base:
                se = (rec[task]["stderr"] or 0.0) ** 2 + (base[task]["stderr"] or 0.0) ** 2
                row[task] = {"mean": rec[task][task] - base[task][task], "stderr": se**0.5}
        out[job] = row
    for a in base["robustness"]:
        if "truth_kl" in a:
            out.setdefault("truth", {})[f"robustness_eps{a['eps']:g}"] = paired_difference(
                a["truth_kl"], a["kl"]
            )
    return out


def run_data(folder: RunFolder, name: str, group: list[dict], seed: int) -> dict:
    """The tasks on a user's data set: each job's record, and each against the plain VAE."""
    tasks = [(folder.job_dir(r.job), seed) for r in group]
    folder.say(f"downstream: {name}: {len(tasks)} jobs")
    records = {rec["job"]: rec for rec in run_tasks(data_tasks, tasks, folder.workers)}
    base = baseline_job(group, group[0].config["latent_dim"])
    jobs = {job: {k: v for k, v in rec.items() if k != "key"} for job, rec in records.items()}
    if any("probe" in rec for rec in jobs.values()):
        probe_figure(folder.figures / f"representation-{name}.png", name, jobs)
    return {
        "data": True,
        "baseline": base,
        "jobs": jobs,
        "against_baseline": None if base is None else compare_data_jobs(records, base),
    }


def run(folder: RunFolder) -> None:
    if not folder.options.get("downstream"):
        return
    seed = int(folder.options["seed"])
    summary = {}
    for name, group in folder.by_process().items():
        config = group[0].config
        if truth_of(config) is None:
            summary[name] = run_data(folder, name, group, seed)
            continue
        truth_record = truth_tasks(config, folder.truth_dir(name), seed)
        tasks = [(folder.job_dir(r.job), folder.truth_dir(name), seed) for r in group]
        folder.say(f"downstream: {name}: {len(tasks)} jobs")
        records = {rec["job"]: rec for rec in run_tasks(job_tasks, tasks, folder.workers)}
        k_true = truth_of(config).latent_dim
        mfg = next(
            (
                r.job
                for r in group
                if (r.config["guide"], r.config["objective"], r.config["latent_dim"])
                == ("mean_field", "elbo", k_true)
            ),
            None,
        )
        summary[name] = {
            "mfg": mfg,
            "truth": {k: v for k, v in truth_record.items() if k not in ("key", "outliers_x")},
            "jobs": {job: {k: v for k, v in rec.items() if k != "key"} for job, rec in records.items()},
            "against_mfg": None if mfg is None else compare_jobs(records, mfg, truth_record),
        }
        robustness_figure(folder.figures / f"robustness-{name}.png", name, summary[name]["jobs"])
        learned = {r.job: (r.config, records[r.job]["noise"]) for r in group if "noise" in records[r.job]}
        if learned:
            noise_figure(folder.figures / f"noise-{name}.png", name, learned)
    if summary:
        atomic_write_json(folder.root / "downstream.json", summary)
