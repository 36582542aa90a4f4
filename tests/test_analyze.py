"""The command line: a tiny end-to-end run, its run folder, and clear errors for bad input."""

import json
import subprocess
import sys

import pytest

from pyrofail.analysis.diagnose import conclude, evidence
from pyrofail.analyze import main

TINY = ["--preset", "tiny", "--quiet", "--steps", "20", "--restarts", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    assert main(TINY + ["--out", str(out)]) == 0
    return out


def test_default_run_writes_a_complete_run_folder(tiny_run, capsys):
    for name in ("config.json", "metrics.json", "report.md"):
        assert (tiny_run / name).is_file()
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["options"]["seed"] == 0 and config["versions"]["torch"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["jobs"]) == {"figure8-K1-mean_field-elbo", "figure8-K1-mean_field-iwae"}
    for job in metrics["jobs"]:
        folder = tiny_run / "jobs" / job
        for name in ("model.pt", "guide.pt", "metrics.json", "figures/decoder.png", "figures/samples.png"):
            assert (folder / name).is_file(), name
        assert not (folder / "fit.ckpt").exists()
    report = (tiny_run / "report.md").read_text()
    assert "| figure8-K1-mean_field-elbo |" in report and "decoder.png" in report


def test_same_seed_gives_byte_identical_metrics(tiny_run, tmp_path):
    again = tmp_path / "again"
    assert main(TINY + ["--out", str(again)]) == 0
    assert (again / "metrics.json").read_bytes() == (tiny_run / "metrics.json").read_bytes()


def test_workers_run_jobs_and_posterior_stage_in_a_pool(tiny_run, tmp_path):
    """--workers 2 runs the fits and the posterior stage in processes; the numbers agree with
    the serial run's up to the thread count's rounding (one thread per worker here)."""
    pooled = tmp_path / "pooled"
    assert main(TINY + ["--workers", "2", "--out", str(pooled)]) == 0
    serial = json.loads((tiny_run / "metrics.json").read_text())
    ours = json.loads((pooled / "metrics.json").read_text())
    for job, summary in serial["posterior"]["jobs"].items():
        pooled_summary = ours["posterior"]["jobs"][job]["model"]
        for key, value in summary["model"].items():
            assert pooled_summary[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert (pooled / "jobs" / job / "posterior.json").is_file()
    assert ours["diagnosis"]["figure8"]["failure"] == serial["diagnosis"]["figure8"]["failure"]


def test_default_run_has_the_posterior_stage(tiny_run):
    from pyrofail.analysis import reference

    for name in ("truth/figure8/reference.nc", "truth/figure8/hardness.json"):
        assert (tiny_run / name).is_file(), name
    for name in ("posterior-figure8.png", "pmo-gap-figure8.png"):
        assert (tiny_run / "figures" / name).read_bytes()[:4] == b"\x89PNG", name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["posterior"]["settings"]["method"] == "auto"
    for job, summary in metrics["posterior"]["jobs"].items():
        folder = tiny_run / "jobs" / job
        record = json.loads((folder / "posterior.json").read_text())
        assert summary["n_points"] == 100 == len(record["model"]["per_point"]["pmo_gap"])  # all 100
        assert len(record["pmo_gap_all_test_points"]) == 100
        ref = reference.load(folder / "reference.nc")
        assert reference.method(ref) == "grid" and reference.draws(ref)[0].shape[:2] == (100, 500)
        # on the same 100 points with the same exact log p(x), the posterior stage's PMO gap
        # (1,000 guide draws a point) is the job's (100 draws) up to the ELBO's Monte Carlo error
        job_metrics = metrics["jobs"][job]["metrics"]
        tolerance = 4 * job_metrics["test_neg_elbo_stderr"]
        assert summary["model"]["pmo_gap"] == pytest.approx(job_metrics["pmo_gap"], abs=tolerance)
    # the diagnosis is the verdict on the stage's own files: the truth's KL* and the two jobs'
    # per-point MLEO and KL*, the IWAE-trained mean-field job as the comparator fixed in advance
    diagnosis = metrics["diagnosis"]["figure8"]
    read = lambda path: json.loads((tiny_run / path).read_text())  # noqa: E731
    vae, iwae = (read(f"jobs/figure8-K1-mean_field-{o}/posterior.json") for o in ("elbo", "iwae"))
    sides = []
    for record, objective in ((vae, "elbo"), (iwae, "iwae")):
        job = metrics["jobs"][f"figure8-K1-mean_field-{objective}"]["metrics"]
        sides.append(
            {
                "label": record["job"],
                "kl": record["best_mean_field"]["per_point"],
                "mleo": record["mleo"]["per_point"],
                "pmo_gap": record["model"]["per_point"]["pmo_gap"],
                "elbo_stderr": job["test_neg_elbo_stderr"],
            }
        )
    expected = conclude(evidence(read("truth/figure8/hardness.json")["best_mean_field"]["per_point"], *sides))
    assert diagnosis["failure"] == expected["failure"] and diagnosis["conditions"] == expected["conditions"]
    assert diagnosis["evidence"]["richer"]["label"] == "figure8-K1-mean_field-iwae"
    report = (tiny_run / "report.md").read_text()
    for text in (
        "## Posterior bias",
        "| figure8-K1-mean_field-elbo | grid | 100 |",
        "## Diagnosis",
        "### figure8: ",
        "- Cx1 (= Cz1) ",
        "![posterior-figure8](figures/posterior-figure8.png)",
        "![pmo-gap-figure8](figures/pmo-gap-figure8.png)",
    ):
        assert text in report, text


def test_no_reference_skips_the_posterior_stage(tmp_path):
    out = tmp_path / "plain"
    assert main(TINY + ["--no-reference", "--out", str(out)]) == 0
    assert not (out / "truth").exists() and not (out / "figures").exists()
    assert not list(out.glob("jobs/*/posterior.json"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "posterior" not in metrics and "diagnosis" not in metrics
    assert "## Posterior bias" not in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["options"]["reference"] is None


def test_reference_options_reach_the_posterior_stage(tmp_path):
    out = tmp_path / "grid20"
    argv = TINY + ["--objective", "elbo", "--reference", "grid", "--reference-points", "20"]
    assert main(argv + ["--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["posterior"]["settings"]["method"] == "grid"
    assert metrics["posterior"]["jobs"]["figure8-K1-mean_field-elbo"]["n_points"] == 20
    # no richer fit in the run: p(x) is compared with the ground truth's
    assert metrics["diagnosis"]["figure8"]["evidence"]["px_cost"]["against"] == "the ground truth"
    # the options of the posterior stage stay out of the jobs' configs
    job = json.loads((out / "jobs" / "figure8-K1-mean_field-elbo" / "config.json").read_text())
    assert "reference" not in job and "reference_points" not in job


def test_resume_of_a_finished_run_recomputes_nothing(tiny_run, capsys):
    before = (tiny_run / "metrics.json").read_bytes()
    stamps = {
        p: p.stat().st_mtime_ns
        for pattern in ("jobs/*/model.pt", "jobs/*/posterior.json", "jobs/*/reference.nc", "truth/*/*")
        for p in tiny_run.glob(pattern)
    }
    assert len(stamps) == 8
    assert main(["--resume", str(tiny_run), "--quiet"]) == 0
    assert (tiny_run / "metrics.json").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "figure9"], "unknown model 'figure9'; choose one of: clusters, degenerate_line, "),
        (["--latent-dim", "0"], "--latent-dim=0 is not allowed; expected an integer >= 1"),
        (["--guide", "gauss"], "unknown guide 'gauss'"),
        (["--objective", "kl"], "unknown objective 'kl'"),
        (["--restarts", "0"], "--restarts=0 is not allowed"),
        (["--steps", "-5"], "--steps=-5 is not allowed"),
        (["--lr", "-0.1"], "--lr=-0.1 is not allowed"),
        (["--device", "tpu"], "--device 'tpu' is not allowed"),
        (["--latent-dim", "1,x"], "'1,x' is not a comma-separated list of ints"),
        (["--model", "figure8,figure8"], "--model lists a value twice"),
        (["--reference", "exact"], "unknown reference method 'exact'; choose one of: auto, grid, nuts"),
        (["--reference", "grid", "--latent-dim", "3"], "--reference grid needs latent dimensions <= 2"),
        (["--reference", "grid", "--no-reference"], "--reference and --no-reference exclude each other"),
        (["--reference-points", "0"], "--reference-points=0 is not allowed"),
        (["--objective", "self_consistent", "--objective-option", "rho=1.5"], "rho=1.5 is not allowed"),
        (["--objective", "spread", "--objective-option", "spread=-1"], "spread=-1 is not allowed"),
        (
            ["--objective", "self_consistent", "--objective-option", "pairing=both"],
            "pairing='both' is not allowed; choose one of: independent, paired",
        ),
        (
            ["--procedure", "posthoc_self_consistency", "--procedure-option", "samples=0"],
            "samples=0 is not allowed",
        ),
        (
            ["--procedure", "posthoc_self_consistency", "--procedure-option", "data=1"],
            "posthoc_self_consistency has no option 'data'; choose one of: samples, val_samples",
        ),
        (["--procedure-option", "samples=5"], "joint takes no options"),
        (
            ["--learn-noise", "sometimes"],
            "unknown --learn-noise 'sometimes'; choose one of: all, above-true-k, none",
        ),
        (
            ["--data", "diabetes", "--learn-noise", "above-true-k"],
            "--learn-noise above-true-k needs a ground truth's K; --data has none",
        ),
        (  # the M2 guide's option exists only where the guide is an M2 guide
            ["--guide-option", "label_in_encoder=false"],
            "mean_field has no option 'label_in_encoder'; choose one of: min_scale",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code = main(TINY + argv + ["--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "config.json").exists()


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyrofail.analyze", "--model", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'nope'; choose one of: clusters, degenerate_line, " in lines[0]


def test_help_documents_every_option(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--guide",
        "--objective",
        "--latent-dim",
        "--restarts",
        "--steps",
        "--seed",
        "--out",
        "--device",
        "--preset",
        "--resume",
        "--workers",
        "--reference",
        "--no-reference",
        "--reference-points",
    ):
        assert flag in out


def test_list_prints_the_registry(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "figure8" in out and "mean_field" in out and "iwae" in out


def test_degenerate_line_with_spread_and_posthoc_runs_to_a_report(tmp_path):
    """Data on a line: no reference posterior (the truth has no density), and the post-hoc
    procedure trains the VAE first, then its encoder on the model's samples."""
    out = tmp_path / "line"
    argv = ["--model", "degenerate_line", "--objective", "spread", "--objective-option", "spread=0.1"]
    argv += ["--procedure", "joint,posthoc_self_consistency", "--noise-per-feature", "--n-train", "200"]
    assert main(TINY + argv + ["--out", str(out)]) == 0
    assert not (out / "truth" / "degenerate_line" / "reference.nc").exists()
    post = json.loads(
        (
            out / "jobs" / "degenerate_line-K1-mean_field-spread-posthoc_self_consistency" / "metrics.json"
        ).read_text()
    )
    assert post["config"]["procedure"] == "posthoc_self_consistency"
    assert len(post["history"]["pretrained"]["restarts"]) == 2  # stage one: the VAE on the data
    report = (out / "report.md").read_text()
    assert "degenerate_line-K1-mean_field-spread-posthoc_self_consistency" in report


def test_a_semi_supervised_run_takes_the_m2_guides_options():
    from pyrofail.analyze import build_parser, resolve

    argv = ["--model", "semicircle", "--guide-option", "label_in_encoder=false"]
    options = resolve(build_parser().parse_args(argv))
    assert options["guide_options"]["mean_field"] == {"label_in_encoder": False}


@pytest.mark.parametrize(
    "argv, learned",
    [
        (["--latent-dim", "1,2,3"], {1: False, 2: False, 3: False}),
        (["--latent-dim", "1,2,3", "--learn-noise"], {1: True, 2: True, 3: True}),
        (["--latent-dim", "1,2,3", "--learn-noise", "above-true-k"], {1: False, 2: True, 3: True}),
        (["--preset", "table1", "--objective", "elbo"], {1: False, 2: True, 3: True}),
        (
            ["--preset", "table1", "--objective", "elbo", "--learn-noise", "none"],
            {1: False, 2: False, 3: False},
        ),
        (
            ["--preset", "table1", "--model", "two_factor_smooth", "--objective", "elbo"],
            {1: False, 2: False, 3: True},
        ),
    ],
)
def test_learn_noise_above_the_true_k_keeps_the_truths_sigma_at_the_true_k(argv, learned):
    """Table 1's GT column is the truth's K with the truth's sigma; the larger K learn sigma
    (two_factor_smooth has K = 2, so only K = 3 is above it)."""
    from pyrofail.analyze import build_parser, resolve
    from pyrofail.stages.jobs import expand

    configs = expand(resolve(build_parser().parse_args(argv)))
    got = {c["latent_dim"]: c["learn_noise"] for c in configs}
    assert got == learned
    assert all(type(c["learn_noise"]) is bool for c in configs)


def test_a_users_data_learns_its_noise_under_the_table1_preset():
    from pyrofail.analyze import build_parser, resolve

    options = resolve(build_parser().parse_args(["--preset", "table1", "--data", "diabetes"]))
    assert options["learn_noise"] is True
