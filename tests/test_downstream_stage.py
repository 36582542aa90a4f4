"""The downstream stage through the command line: on a zoo process (every job against the
MFG-VAE, the learned noise against the truth's) and on a user's labelled table (each fit's
self-consistency and the robustness curve of its representation against the plain VAE)."""

import json

import numpy as np

from pyrofail.analyze import main

TINY = ["--preset", "tiny", "--quiet", "--steps", "20", "--restarts", "2", "--no-reference", "--downstream"]


def test_a_zoo_run_compares_every_fit_with_the_mfg_vae_and_the_learned_noise_with_the_truth(tmp_path):
    out = tmp_path / "run"
    args = ["--model", "two_factor_smooth", "--latent-dim", "2", "--objective", "elbo,iwae", "--learn-noise"]
    assert main(TINY + args + ["--n-test", "60", "--out", str(out)]) == 0
    block = json.loads((out / "downstream.json").read_text())["two_factor_smooth"]
    assert block["mfg"] == "two_factor_smooth-K2-mean_field-elbo"
    row = block["against_mfg"]["two_factor_smooth-K2-mean_field-iwae"]
    assert {"robustness_eps0.05", "robustness_eps0.2", "mig"} <= set(row)
    noise = block["jobs"]["two_factor_smooth-K2-mean_field-iwae"]["noise"]
    assert abs(noise["truth"] - 0.15) < 1e-6
    assert len(noise["restart_values"]) == 2 and noise["stderr"] is not None
    assert (out / "figures" / "noise-two_factor_smooth.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Signal and noise: the learned σ against the truth's (0.150)" in report


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
    args = ["--data", str(table), "--columns", "a,b,c", "--labels", "cls", "--objective", "elbo"]
    args += ["--procedure", "joint,posthoc_self_consistency"]
    assert main(TINY + args + ["--out", str(out)]) == 0
    block = json.loads((out / "downstream.json").read_text())["curve"]
    assert block["data"] and block["baseline"] == "curve-K1-mean_field-elbo"
    job = block["jobs"]["curve-K1-mean_field-elbo-posthoc_self_consistency"]
    assert job["probe"]["eps"] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert len(job["probe"]["correct"][0]) == len(job["probe"]["correct"][-1]) > 0
    assert len(job["consistency"]["per_point"]) == 1000
    row = block["against_baseline"]["curve-K1-mean_field-elbo-posthoc_self_consistency"]
    assert {"consistency", "accuracy_eps0", "accuracy_eps0.3"} <= set(row)
    assert (out / "figures" / "representation-curve.png").stat().st_size > 0
    assert "Against the plain VAE (curve-K1-mean_field-elbo)" in (out / "report.md").read_text()
