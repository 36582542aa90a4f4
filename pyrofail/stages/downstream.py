"""Stage ``downstream``: what a failure costs in the tasks VAEs are used for (``--downstream``).

Per job, on its test data (Yacoby, Pan & Doshi-Velez 2020, Section 6):

* **compression**: the total :math:`I(x; z)` of the encoder (the K each criterion would choose
  is in the report's "which latent dimension" table);
* **signal and noise**: the learned σ against the truth's (with ``--learn-noise``);
* **disentanglement** (fits with at least two codes of processes with two factors): MIG of the
  encoder means about the true factors on ``--downstream-points`` fresh draws of the truth
  (10,000: its plug-in bias under 1%), DCI on the first :data:`DCI_POINTS` of them, as
  disentanglement_lib computes them (:mod:`pyrofail.analysis.downstream.disentanglement`);
* **adversarial robustness**: the worst :math:`\\ell_\\infty` perturbation of each test point
  for the encoder (ten starts and a corner search), KL(q(z|x) ‖ q(z|x + δ)) at radii
  :data:`EPSILONS` in units of the data's scale (its mean per-feature sd, so that robustness
  compares across processes), the truth's exact posterior shift under the same δ, and the
  de-noising attack (:mod:`pyrofail.analysis.downstream.attacks`);
* **outlier detection**: the AUROC of log p_θ(x) between held-out points and off-manifold
  points of the truth, against the truth's own (:mod:`pyrofail.analysis.downstream.outliers`).

Per process, every job against the MFG-VAE with *paired* standard errors: the robustness KL
over the same attacked points, the AUROC by DeLong's paired covariance, MIG over the same
bootstrap resamples. On a user's data: the encoder's self-consistency and, with labels, a
linear probe's accuracy under the encoder attack, each against the plain VAE, paired (with
cross-fitting, on the first fold's fits).

Reads: ``jobs/<job>/{metrics.json, model.pt, guide.pt}``. Writes: ``jobs/<job>/downstream.json``,
``truth/<process>/downstream.json``, ``downstream.json``, ``figures/robustness-<process>.png``,
``figures/noise-<process>.png`` (with ``--learn-noise``), ``figures/representation-<data>.png``.
"""

from __future__ import annotations

import torch

from pyrofail.analysis import information
from pyrofail.analysis.downstream import attacks, disentanglement, outliers, self_consistency
from pyrofail.analysis.figures.plots import noise_figure, probe_figure, robustness_figure
from pyrofail.analysis.reference import grid
from pyrofail.estimate import Estimate
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.downstream import (
    Attack,
    DataTasks,
    Disentanglement,
    DownstreamSummary,
    JobTasks,
    LearnedNoise,
    Probe,
    ProcessComparison,
    TruthTasks,
)
from pyrofail.records.findings import Difference
from pyrofail.records.folder import job_data, process_id, truth_of
from pyrofail.stages.pool import run_tasks

__all__ = ["DCI_POINTS", "EPSILONS", "learned_noise", "run"]

EPSILONS = (0.05, 0.1, 0.2)  # attack radii, in units of the data's mean per-feature sd
# the representation's attack radii on a user's data set (ε = 0: clean accuracy)
PROBE_EPSILONS = (0.0, 0.05, 0.1, 0.2, 0.3)
CONSISTENCY_POINTS = 1000
ATTACK_POINTS = 200  # test points attacked per job and radius
ATTACK_STEPS = 50
OUTLIERS = 500  # off-manifold points per process
# DCI refits 100-tree classifiers per factor and bootstrap draw: on 2,000 points, 20 draws keep
# a job to minutes and leave its standard error known only to about ±30%, which its flag says
DCI_POINTS = 2000
DCI_DRAWS = 20


def _codes(guide, x: torch.Tensor) -> torch.Tensor:
    """The encoder means :math:`\\mathbb E_q[z \\mid x]` (exact, or from 256 draws)."""
    return self_consistency.encoder_mean(guide.distribution(x), seed=0).detach()


def _factor_points(truth, folder: RunFolder):
    """Fresh draws of the truth for disentanglement: ``(x, z)``."""
    n = int(folder.options.downstream_points)
    data = truth.sample(n, seed=int(folder.options.seed) + 1009)
    return data.x, data.z


def _disentanglement(codes, factors, seed: int) -> Disentanglement:
    """MIG and DCI of ``codes`` as a record ('not defined' with the reason where they are not)."""
    m = disentanglement.mig(codes, factors, seed=seed)
    if not m["defined"]:
        return Disentanglement(False, m["protocol"], reason=m["reason"], n_points=int(codes.shape[0]))
    d = disentanglement.dci(codes[:DCI_POINTS], factors[:DCI_POINTS], bootstrap=DCI_DRAWS, seed=seed)
    est = {k: Estimate.from_dict(v) for k, v in (d.get("estimates") or {}).items()}
    out = Disentanglement(
        True,
        m["protocol"],
        factors=", ".join(dict.fromkeys(m["factor_discretization"])),
        mig=Estimate.from_dict(m["estimate"]),
        n_points=int(codes.shape[0]),
    )
    if d["defined"]:
        out.disentanglement = est.get("disentanglement")
        out.completeness = est.get("completeness")
        out.informativeness = est.get("informativeness_test")
        out.informativeness_kind = d["informativeness"]
    else:
        out.reason = d["reason"]
    return out


def truth_tasks(folder: RunFolder, record: JobRecord) -> str:
    """The truth's own answers (its exact posterior means' MIG/DCI at K ≤ 2, its AUROC), the
    off-manifold points every job is scored on, and the data's scale."""
    config, seed = record.config, int(folder.options.seed)
    name = process_id(config)
    key = {
        "process": name,
        "seed": seed,
        "n_test": config.n_test,
        "points": folder.options.downstream_points,
    }

    def compute() -> TruthTasks:
        truth, splits = job_data(config)
        out = TruthTasks(key, attacks.data_scale(splits.train.x))
        if truth.latent_dim <= grid.MAX_K:
            if truth.latent_dim >= 2:
                x, z = _factor_points(truth, folder)
                means = grid.grid_posterior(truth, x.double()).mean
                out.disentanglement = _disentanglement(means, z, seed)
            away = outliers.off_manifold(truth, OUTLIERS, seed=seed, reference=splits.val.x)
            out.outliers_x = away["x"].tolist()
            inside = outliers.outlier_scores(truth, splits.test.x)["per_point"]
            outside = outliers.outlier_scores(truth, away["x"])["per_point"]
            a = outliers.auroc(inside, outside)
            out.auroc = Estimate(a["auroc"], a["stderr"], a["n_inliers"] + a["n_outliers"])
        return out

    folder.cached(folder.truth_dir(name) / "downstream.json", TruthTasks, key, compute)
    return name


def learned_noise(model, truth, restarts) -> LearnedNoise:
    r"""The learned :math:`\sigma` against the truth's (signal and noise, Yacoby et al. 2020,
    Section 6): the selected fit's, and its mean ± standard error over the restarts that
    finished (each restart's :math:`\sigma` as the fit recorded it; a per-feature
    :math:`\sigma` enters as its mean over features)."""

    def get(r, key):
        return r[key] if isinstance(r, dict) else getattr(r, key)

    values = [
        float(torch.tensor(get(r, "noise_scale")).mean())
        for r in restarts
        if get(r, "noise_scale") is not None and get(r, "validation_objective") is not None
    ]
    selected = float(model.noise_scale.mean())
    true_sigma = float(torch.as_tensor(truth.noise_scale).mean())
    over = Estimate.of(values) if len(values) > 1 else None
    return LearnedNoise(selected, values, over, true_sigma, selected / true_sigma)


def job_tasks(folder: RunFolder, record: JobRecord) -> str:
    """Every downstream task for one job on a zoo process (``downstream.json``)."""
    seed, job_dir = int(folder.options.seed), folder.job_dir(record.job)
    key = {
        "job": record.job,
        "seed": seed,
        "epsilons": list(EPSILONS),
        "points": folder.options.downstream_points,
    }

    def compute() -> JobTasks:
        truth = truth_of(record.config)
        model, guide = folder.fitted(record)
        x = folder.test_data(record.job)["x"]
        truth_record = folder.read(
            TruthTasks, folder.truth_dir(process_id(record.config)) / "downstream.json"
        )
        out = JobTasks(
            key,
            record.job,
            Estimate(**_mean_se(information.total_mutual_information(guide, x, seed=seed))),
            [],
        )
        if getattr(model, "learn_noise", False):
            out.noise = learned_noise(model, truth, record.restarts)
        if truth.latent_dim >= 2:
            xf, zf = _factor_points(truth, folder)
            out.disentanglement = _disentanglement(_codes(guide, xf), zf, seed)
        xa = x[:ATTACK_POINTS]
        for eps in EPSILONS:
            hit = attacks.attack_encoder(
                guide, xa, eps, scale=truth_record.scale, steps=ATTACK_STEPS, seed=seed
            )
            row = Attack(eps, hit["radius"], hit["divergence"].tolist(), hit["estimate"])
            if truth.latent_dim <= grid.MAX_K:
                row.truth_kl = attacks.posterior_shift(truth, xa, hit["x_adv"])["per_point"].tolist()
            d = attacks.attack_denoiser(
                model, guide, xa, eps, scale=truth_record.scale, steps=ATTACK_STEPS, seed=seed
            )
            row.denoise_error = Estimate(d["mean"], d["stderr"], xa.shape[0])
            row.clean_error = Estimate(d["clean_mean"], d["clean_stderr"], xa.shape[0])
            out.robustness.append(row)
        if truth_record.outliers_x is not None:
            away = torch.tensor(truth_record.outliers_x, dtype=x.dtype)
            inside = outliers.outlier_scores(model, x, guide=guide)["per_point"]
            outside = outliers.outlier_scores(model, away, guide=guide)["per_point"]
            a = outliers.auroc(inside, outside)
            out.auroc = Estimate(a["auroc"], a["stderr"], a["n_inliers"] + a["n_outliers"])
            out.scores_inliers, out.scores_outliers = inside.tolist(), outside.tolist()
        return out

    folder.cached(job_dir / "downstream.json", JobTasks, key, compute)
    return record.job


def _mean_se(result: dict) -> dict:
    return {"mean": result["mean"], "stderr": result["stderr"]}


def data_tasks(folder: RunFolder, record: JobRecord) -> str:
    """The downstream tasks on a user's data set (no ground truth): compression, the
    self-consistency of the encoder for its own decoder, and with labels the robustness of the
    representation — a linear classifier on the encoder means, its test accuracy under the
    encoder attack over :data:`PROBE_EPSILONS` (in units of the data's scale)."""
    seed, job_dir = int(folder.options.seed), folder.job_dir(record.job)
    key = {"job": record.job, "seed": seed, "epsilons": list(PROBE_EPSILONS)}

    def compute() -> DataTasks:
        model, guide = folder.fitted(record)
        _, splits = job_data(record.config)
        train, test = splits.train, splits.test
        cons = self_consistency.consistency(model, guide, CONSISTENCY_POINTS, seed=seed)
        out = DataTasks(
            key,
            record.job,
            Estimate(**_mean_se(information.total_mutual_information(guide, test.x, seed=seed))),
            Estimate.of(cons["per_point"]),
            cons["per_point"].tolist(),
        )
        if train.y is not None and test.y is not None:
            scale = attacks.data_scale(train.x)
            probe = self_consistency.linear_probe(
                guide, train.x, train.y, test.x, test.y, eps=PROBE_EPSILONS, steps=ATTACK_STEPS, seed=seed,
                scale=scale,
            )  # fmt: skip
            n = test.x.shape[0]
            accuracy = [Estimate(a, s, n) for a, s in zip(probe["accuracy"], probe["stderr"])]
            out.probe = Probe(list(probe["eps"]), accuracy, probe["correct"].to(torch.int8).tolist())
        return out

    folder.cached(job_dir / "downstream.json", DataTasks, key, compute)
    return record.job


def baseline_job(group: list[JobRecord], k: int) -> str | None:
    """The plain VAE among a process's jobs: the mean-field guide trained jointly by the ELBO at
    latent dimension ``k``, the one every other fit is compared with."""
    for r in group:
        c = r.config
        if (c.guide, c.objective, c.latent_dim, c.procedure) == (
            "mean_field",
            "elbo",
            k,
            "joint",
        ):
            return r.job
    return None


def _diff(label: str, estimate: Estimate) -> Difference:
    return Difference(label, estimate, estimate.verdict())


def compare_data_jobs(records: dict[str, DataTasks], base: str) -> dict:
    """Every job against the plain VAE ``base`` on a data set: the consistency distance paired
    over the same prior draws and the probe's accuracy at each ε paired over the test points."""
    ref = records[base]
    out = {}
    for job, rec in records.items():
        if job == base:
            continue
        row = {
            "consistency": _diff(
                "self-consistency", Estimate.paired(rec.consistency_per_draw, ref.consistency_per_draw)
            )
        }
        if rec.probe is not None and ref.probe is not None:
            for eps, a, b in zip(rec.probe.eps, rec.probe.correct, ref.probe.correct):
                row[f"accuracy_eps{eps:g}"] = _diff(f"accuracy at ε={eps:g}", Estimate.paired(a, b))
        out[job] = row
    return out


def compare_jobs(folder: RunFolder, group: list[JobRecord], records: dict[str, JobTasks], mfg: str) -> dict:
    """Every job against the MFG-VAE ``mfg``, paired: the robustness KL over the same attacked
    points, the AUROC by DeLong's paired covariance, MIG over the same bootstrap resamples (the
    codes recomputed at the same fresh points); the truth's exact posterior shift beside them."""
    base, seed = records[mfg], int(folder.options.seed)
    truth = truth_of(group[0].config)
    factor_points = _factor_points(truth, folder) if truth.latent_dim >= 2 else None
    by_name = {r.job: r for r in group}
    codes_mfg = None
    if factor_points is not None and base.disentanglement is not None and base.disentanglement.defined:
        codes_mfg = _codes(folder.fitted(by_name[mfg])[1], factor_points[0])
    out = {}
    for job, rec in records.items():
        if job == mfg:
            continue
        row = {}
        for a, b in zip(rec.robustness, base.robustness):
            row[f"robustness_eps{a.eps:g}"] = _diff(
                f"KL under attack at ε={a.eps:g}", Estimate.paired(a.kl, b.kl)
            )
        if rec.scores_inliers is not None and base.scores_inliers is not None:
            d = outliers.auroc_difference(
                rec.scores_inliers, rec.scores_outliers, base.scores_inliers, base.scores_outliers
            )
            row["auroc"] = _diff("outlier AUROC", d)
        if codes_mfg is not None and rec.disentanglement is not None and rec.disentanglement.defined:
            codes = _codes(folder.fitted(by_name[job])[1], factor_points[0])
            row["mig"] = _diff(
                "MIG", disentanglement.mig_difference(codes, codes_mfg, factor_points[1], seed=seed)
            )
        out[job] = row
    truth_row = {
        f"robustness_eps{a.eps:g}": _diff(
            f"KL under attack at ε={a.eps:g}", Estimate.paired(a.truth_kl, a.kl)
        )
        for a in base.robustness
        if a.truth_kl is not None
    }
    if truth_row:
        out["truth"] = truth_row
    return out


def _process(folder: RunFolder, name: str, group: list[JobRecord]) -> ProcessComparison:
    config = group[0].config
    label = f"downstream: {name}"
    if truth_of(config) is None:
        tasks = [(data_tasks, (folder, r)) for r in group]
        run_tasks(_dispatch, tasks, folder.workers, threads=folder.threads, label=label, quiet=folder.quiet)
        records = {r.job: folder.read(DataTasks, folder.job_dir(r.job) / "downstream.json") for r in group}
        base = baseline_job(group, config.latent_dim)
        if any(rec.probe is not None for rec in records.values()):
            probe_figure(folder.figures / f"representation-{name}.png", name, records)
        against = {} if base is None else compare_data_jobs(records, base)
        return ProcessComparison(base, True, against)
    truth_tasks(folder, group[0])
    tasks = [(job_tasks, (folder, r)) for r in group]
    run_tasks(_dispatch, tasks, folder.workers, threads=folder.threads, label=label, quiet=folder.quiet)
    records = {r.job: folder.read(JobTasks, folder.job_dir(r.job) / "downstream.json") for r in group}
    mfg = baseline_job(group, truth_of(config).latent_dim)
    robustness_figure(folder.figures / f"robustness-{name}.png", name, records)
    learned = {r.job: (r.config, records[r.job].noise) for r in group if records[r.job].noise is not None}
    if learned:
        noise_figure(folder.figures / f"noise-{name}.png", name, learned)
    return ProcessComparison(mfg, False, {} if mfg is None else compare_jobs(folder, group, records, mfg))


def _first_fold(group: list[JobRecord]) -> list[JobRecord]:
    """A cross-fitted data set's tasks run on the first fold's fits (one set of fits to compare)."""
    return [r for r in group if (r.config.fold or 0) == 0]


def run(folder: RunFolder) -> None:
    if not folder.options.downstream:
        return
    summary = {
        name: _process(folder, name, _first_fold(group)) for name, group in folder.by_process().items()
    }
    if summary:
        folder.write(DownstreamSummary(summary), folder.root / "downstream.json")


def _dispatch(fn, args):
    return fn(*args)
