"""The downstream stage through the command line: on a zoo process (every job against the
MFG-VAE, paired; the learned noise against the truth's) and on a user's labelled table (each
fit's self-consistency and the robustness curve of its representation against the plain VAE)."""

import numpy as np

from pyrofail.analyze import main
from pyrofail.records import RunFolder
from pyrofail.records.downstream import DataTasks, DownstreamSummary, JobTasks, TruthTasks

TINY = ["--preset", "tiny", "--quiet", "--steps", "20", "--restarts", "2", "--no-reference", "--downstream"]


def _few_dci_draws(monkeypatch):
    """Two bootstrap draws of DCI instead of the stage's 20: each draw refits 100 boosting stages
    of 20-class trees per factor and code set, minutes in all, and these tests check the
    wiring, not DCI's error (tests/analysis/downstream test that). In-process (one worker), so
    that the patch applies."""
    from pyrofail.stages import downstream

    monkeypatch.setattr(downstream, "DCI_DRAWS", 2)
    return ["--workers", "1"]


def test_a_zoo_run_compares_every_fit_with_the_mfg_vae_and_the_learned_noise_with_the_truth(
    tmp_path, monkeypatch
):
    out = tmp_path / "run"
    args = [
        "--process",
        "two_factor_smooth",
        "--latent-dim",
        "2",
        "--objective",
        "elbo,iwae",
        "--learn-noise",
    ]
    # 120 fresh draws for MIG and DCI (the tiny preset's 500 spend minutes in DCI's bootstrap)
    args += _few_dci_draws(monkeypatch)
    assert main(TINY + args + ["--n-test", "60", "--downstream-points", "120", "--out", str(out)]) == 0
    summary = RunFolder.read(DownstreamSummary, out / "downstream.json").processes["two_factor_smooth"]
    assert summary.baseline == "two_factor_smooth-K2-mean_field-elbo"
    row = summary.against["two_factor_smooth-K2-mean_field-iwae"]
    assert {"robustness_eps0.05", "robustness_eps0.2", "mig", "auroc"} <= set(row)
    assert all(
        d.estimate.stderr is not None and d.verdict in ("greater", "less", "tie") for d in row.values()
    )
    job = RunFolder.read(JobTasks, out / "jobs" / "two_factor_smooth-K2-mean_field-iwae" / "downstream.json")
    truth = RunFolder.read(TruthTasks, out / "truth" / "two_factor_smooth" / "downstream.json")
    assert abs(job.noise.truth - 0.15) < 1e-6
    assert len(job.noise.restart_values) == 2 and job.noise.over_restarts.stderr is not None
    assert job.disentanglement.defined and job.disentanglement.protocol == "disentanglement_lib"
    assert job.disentanglement.n_points == 120  # --downstream-points: the fresh draws
    # the attack radius is in units of the data's scale
    assert abs(job.robustness[0].radius - 0.05 * truth.scale) < 1e-9
    assert (out / "figures" / "noise-two_factor_smooth.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Signal and noise: the learned σ against the truth's (0.150)" in report
    assert "disentanglement_lib's protocol" in report


def test_a_one_code_fit_gets_no_mig_or_dci(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["--process", "two_factor_steps", "--latent-dim", "1", "--objective", "elbo"]
    args += _few_dci_draws(monkeypatch)
    assert main(TINY + args + ["--n-test", "40", "--downstream-points", "120", "--out", str(out)]) == 0
    job = RunFolder.read(JobTasks, out / "jobs" / "two_factor_steps-K1-mean_field-elbo" / "downstream.json")
    assert not job.disentanglement.defined and job.disentanglement.mig is None
    assert "MIG needs at least 2 codes" in job.disentanglement.reason
    assert "— (MIG needs at least 2 codes" in (out / "report.md").read_text()


def test_a_labelled_table_gets_self_consistency_and_the_robustness_curve(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=240)
    rows = ["a,b,c,cls"] + [
        f"{u:.4f},{np.sin(2 * u) + 0.1 * rng.normal():.4f},{u * u + 0.1 * rng.normal():.4f},{int(u > 0)}"
        for u in z
    ]
    table = tmp_path / "curve.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = [
        "--data",
        str(table),
        "--columns",
        "a,b,c",
        "--labels",
        "cls",
        "--objective",
        "elbo",
        "--folds",
        "1",
    ]
    args += ["--procedure", "joint,posthoc_self_consistency"]
    assert main(TINY + args + ["--out", str(out)]) == 0
    summary = RunFolder.read(DownstreamSummary, out / "downstream.json").processes["curve"]
    assert summary.data and summary.baseline == "curve-K1-mean_field-elbo"
    name = "curve-K1-mean_field-elbo-posthoc_self_consistency"
    job = RunFolder.read(DataTasks, out / "jobs" / name / "downstream.json")
    assert job.probe.eps == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert len(job.probe.correct[0]) == len(job.probe.correct[-1]) > 0
    assert len(job.consistency_per_draw) == 1000
    assert {"consistency", "accuracy_eps0", "accuracy_eps0.3"} <= set(summary.against[name])
    assert (out / "figures" / "representation-curve.png").stat().st_size > 0
    assert "Against the plain VAE (curve-K1-mean_field-elbo)" in (out / "report.md").read_text()
