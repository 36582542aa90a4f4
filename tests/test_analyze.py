"""The command line: a tiny end-to-end run, its run folder, and clear errors for bad input."""

import json
import subprocess
import sys

import pytest

from pyrofail.analysis.diagnose import conclude, evidence
from pyrofail.analyze import main
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.findings import Findings
from pyrofail.records.posterior import PosteriorRecord, TruthHardness
from pyrofail.records.verdict import Verdicts
from tests.report_checks import summary_lines, unmarked_numbers

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
    assert RunFolder.open(tiny_run).options.seed == 0 and config["versions"]["torch"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["jobs"]) == {"figure8-K1-mean_field-elbo", "figure8-K1-mean_field-iwae"}
    for job in metrics["jobs"]:
        folder = tiny_run / "jobs" / job
        for name in ("model.pt", "guide.pt", "metrics.json", "figures/decoder.png", "figures/samples.png"):
            assert (folder / name).is_file(), name
        assert not (folder / "fit.ckpt").exists()
    report = (tiny_run / "report.md").read_text()
    assert "| figure8-K1-mean_field-elbo |" in report and "decoder.png" in report
    assert report.splitlines()[0] == "# pyrofail report: figure8"


def test_the_report_opens_with_the_verdict_and_every_table_number_has_its_error(tiny_run):
    report = (tiny_run / "report.md").read_text()
    summary = summary_lines(report)
    assert any(line.startswith("- **figure8") for line in summary[:3]), summary[:3]
    assert unmarked_numbers(report) == []


def test_same_seed_gives_byte_identical_metrics(tiny_run, tmp_path):
    again = tmp_path / "again"
    assert main(TINY + ["--out", str(again)]) == 0
    assert (again / "metrics.json").read_bytes() == (tiny_run / "metrics.json").read_bytes()


def _read(run, cls, path):
    return RunFolder.read(cls, run / path)


def test_workers_run_jobs_and_posterior_stage_in_a_pool(tiny_run, tmp_path):
    """--workers 2 runs the fits and the posterior stage in processes; the numbers agree with
    the serial run's up to the thread count's rounding (one thread per worker in both)."""
    pooled = tmp_path / "pooled"
    assert main(TINY + ["--workers", "2", "--out", str(pooled)]) == 0
    for job in ("figure8-K1-mean_field-elbo", "figure8-K1-mean_field-iwae"):
        serial = _read(tiny_run, PosteriorRecord, f"jobs/{job}/posterior.json").model.mean
        ours = _read(pooled, PosteriorRecord, f"jobs/{job}/posterior.json").model.mean
        for key, value in serial.items():
            assert ours[key].mean == pytest.approx(value.mean, rel=1e-4, abs=1e-6), key
    verdict = _read(tiny_run, Verdicts, "verdicts.json").verdicts["figure8"]
    assert _read(pooled, Verdicts, "verdicts.json").verdicts["figure8"].failure == verdict.failure


def test_default_run_has_the_posterior_stage(tiny_run):
    from pyrofail.analysis import reference

    for name in ("truth/figure8/reference.nc", "truth/figure8/hardness.json"):
        assert (tiny_run / name).is_file(), name
    for name in ("posterior-figure8.png", "pmo-gap-figure8.png"):
        assert (tiny_run / "figures" / name).read_bytes()[:4] == b"\x89PNG", name
    for objective in ("elbo", "iwae"):
        folder = tiny_run / "jobs" / f"figure8-K1-mean_field-{objective}"
        record = RunFolder.read(PosteriorRecord, folder / "posterior.json")
        job = RunFolder.read(JobRecord, folder / "metrics.json")
        assert record.n_points == 100 == len(record.model.per_point["pmo_gap"])  # all 100
        assert len(record.pmo_gap_all_test_points) == 100
        ref = reference.load(folder / "reference.nc")
        assert reference.method(ref) == "grid" and reference.draws(ref)[0].shape[:2] == (100, 500)
        # on the same 100 points with the same exact log p(x), the posterior stage's PMO gap
        # (1,000 guide draws a point) is the job's (100 draws) up to the ELBO's Monte Carlo error
        points = RunFolder.read(JobRecord, folder / "metrics.json").metrics
        assert record.model.mean["pmo_gap"].mean == pytest.approx(
            points.pmo_gap.mean, abs=0.05 * points.pmo_gap.mean
        )
        assert job.metrics.test_neg_log_px.exact and job.metrics.log_px_method == "grid"
    # the diagnosis is the verdict on the stage's own records: the truth's KL* and the two jobs'
    # per-point KL*, PMO gap and MLEO, the IWAE-trained mean-field job as the comparator fixed in advance
    verdict = _read(tiny_run, Verdicts, "verdicts.json").verdicts["figure8"]
    hardness = _read(tiny_run, TruthHardness, "truth/figure8/hardness.json")
    folder = RunFolder.open(tiny_run)
    sides = []
    for objective in ("elbo", "iwae"):
        job = f"figure8-K1-mean_field-{objective}"
        record = _read(tiny_run, PosteriorRecord, f"jobs/{job}/posterior.json")
        points = folder.test_points(job)
        mleo = [t - v for t, v in zip(points.truth_log_px, points.log_px)]
        sides.append(
            {
                "job": job,
                "kl": record.best_mean_field.per_point,
                "mleo": mleo,
                "pmo_gap": record.model.per_point["pmo_gap"],
                "neg_elbo": points.neg_elbo,
            }
        )
    expected = conclude(evidence(hardness.best_mean_field.per_point, *sides))
    assert verdict.failure == expected.failure and verdict.conditions == expected.conditions
    assert verdict.evidence.richer.job == "figure8-K1-mean_field-iwae"
    assert verdict.evidence.n_test == 100  # the MLEO over every test point
    report = (tiny_run / "report.md").read_text()
    for text in (
        "## Summary",
        "## Posterior bias",
        "| figure8-K1-mean_field-elbo | grid | 100 (0) |",
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
    assert "posterior" not in metrics and "verdicts" not in metrics and not (out / "verdicts.json").exists()
    report = (out / "report.md").read_text()
    assert "## Posterior bias" not in report and "No diagnosis in this run" in report
    assert RunFolder.open(out).options.reference is None


def test_reference_options_reach_the_posterior_stage(tmp_path):
    out = tmp_path / "grid20"
    argv = TINY + ["--objective", "elbo", "--reference", "grid", "--reference-points", "20"]
    assert main(argv + ["--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["posterior"]["settings"]["method"] == "grid"
    assert _read(out, PosteriorRecord, "jobs/figure8-K1-mean_field-elbo/posterior.json").n_points == 20
    # no richer fit in the run: p(x) is compared with the ground truth's
    verdict = _read(out, Verdicts, "verdicts.json").verdicts["figure8"]
    assert verdict.evidence.richer is None and "than the ground truth's" in " ".join(verdict.sentences())
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
    findings = (tiny_run / "findings.json").read_bytes()
    assert main(["--resume", str(tiny_run), "--quiet"]) == 0
    assert (tiny_run / "metrics.json").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (tiny_run / "findings.json").read_bytes() == findings
    assert RunFolder.read(Findings, tiny_run / "findings.json") is not None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "figure9"], "unknown --process 'figure9'; choose one of: clusters, degenerate_line, "),
        (["--process", "figure9"], "unknown --process 'figure9'; choose one of: clusters, degenerate_line, "),
        (["--latent-dim", "0"], "--latent-dim=0 is not allowed; expected an integer >= 1"),
        (["--guide", "gauss"], "unknown --guide 'gauss'"),
        (["--objective", "kl"], "unknown --objective 'kl'"),
        (["--restarts", "0"], "--restarts=0 is not allowed"),
        (["--steps", "-5"], "--steps=-5 is not allowed"),
        (["--lr", "-0.1"], "--lr=-0.1 is not allowed"),
        (["--device", "tpu"], "--device 'tpu' is not allowed"),
        (["--latent-dim", "1,x"], "'1,x' is not a comma-separated list of ints"),
        (["--process", "figure8,figure8"], "--process lists a value twice"),
        (["--reference", "exact"], "argument --reference: invalid choice: 'exact'"),
        (["--reference", "grid", "--latent-dim", "3"], "--reference grid needs latent dimensions <= 2"),
        (["--reference", "grid", "--no-reference"], "--reference and --no-reference exclude each other"),
        (["--reference-points", "0"], "--reference-points=0 is not allowed"),
        (["--threads", "0"], "--threads=0 is not allowed"),
        (["--workers", "0"], "--workers=0 is not allowed"),
        (["--columns", "age"], "--columns describes --data; give --data"),
        (["--data", "diabetes", "--columns", "nope"], "column 'nope' is not in data set 'diabetes'"),
        (["--data", "diabetes", "--model", "figure8"], "--data replaces --process"),
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
    assert (
        len(lines) == 1 and "unknown --process 'nope'; choose one of: clusters, degenerate_line, " in lines[0]
    )


def test_help_documents_every_option_with_its_default(capsys):
    from pyrofail.options import OPTIONS

    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in OPTIONS.values():
        for flag in option.flags:
            assert flag in out, flag
    for flag in ("--preset", "--resume", "--workers", "--threads", "--out", "--no-reference", "--list"):
        assert flag in out
    # the default preset's defaults, where a newcomer looks for them
    for text in ("(default: 3000)", "(default: 4)", "(default: clusters)", "(default: mean_field)",
                 "(default: elbo,iwae)", "(default: 1)", "(default: 0.6,0.2,0.2)"):  # fmt: skip
        assert text in out, text


def test_list_prints_every_registry_aligned(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [line for line in lines if not line.startswith(" ")]
    assert titles == [
        "models:",
        "guides:",
        "objectives:",
        "procedures:",
        "regressions:",
        "presets (--preset):",
        "bundled data sets (--data):",
    ]
    entries = [line for line in lines if line.startswith("  ")]
    columns = {len(line) - len(line[2:].split(" ", 1)[1].lstrip()) for line in entries if " " in line[2:]}
    assert len(columns) == 1, "descriptions start in one column"
    names = {line.split()[0] for line in entries}
    assert {"figure8", "mean_field", "iwae", "libi", "table1", "tiny", "diabetes", "digits"} <= names


@pytest.mark.parametrize(
    "argv, name",
    [
        ([], "clusters-"),
        (["--process", "figure8,clusters"], "figure8-clusters-"),
        (["--preset", "table1"], "table1-figure8-clusters-"),
        (["--data", "diabetes"], "diabetes-"),
        (["--data", "/some/where/msft.csv"], "msft-"),
    ],
)
def test_run_folders_are_named_after_what_they_fit(argv, name):
    from pyrofail.analyze import build_parser, run_name

    args = build_parser().parse_args(argv)
    options = {**vars(args), "preset": args.preset}
    if "process" not in options and "data" not in options:
        options["process"] = ["figure8", "clusters"] if args.preset == "table1" else ["clusters"]
    assert f"{run_name(options)}-" == name


def test_degenerate_line_with_spread_and_posthoc_runs_to_a_report(tmp_path):
    """Data on a line: no reference posterior (the truth has no density), and the post-hoc
    procedure trains the VAE first, then its encoder on the model's samples."""
    out = tmp_path / "line"
    argv = ["--process", "degenerate_line", "--objective", "spread", "--objective-option", "spread=0.1"]
    argv += ["--procedure", "joint,posthoc_self_consistency", "--noise-per-feature", "--n-train", "200"]
    assert main(TINY + argv + ["--out", str(out)]) == 0
    assert not (out / "truth" / "degenerate_line" / "reference.nc").exists()
    post = _read(
        out, JobRecord, "jobs/degenerate_line-K1-mean_field-spread-posthoc_self_consistency/metrics.json"
    )
    assert post.config.procedure == "posthoc_self_consistency"
    assert len(post.history["pretrained"]["restarts"]) == 2  # stage one: the VAE on the data
    report = (out / "report.md").read_text()
    assert "degenerate_line-K1-mean_field-spread-posthoc_self_consistency" in report


def test_a_semi_supervised_run_takes_the_m2_guides_options():
    from pyrofail.analyze import build_parser, resolve

    argv = ["--process", "semicircle", "--guide-option", "label_in_encoder=false"]
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
            ["--preset", "table1", "--process", "two_factor_smooth", "--objective", "elbo"],
            {1: False, 2: False, 3: True},
        ),
    ],
)
def test_learn_noise_above_the_true_k_keeps_the_truths_sigma_at_the_true_k(argv, learned):
    """Table 1's GT column is the truth's K with the truth's sigma; the larger K learn sigma
    (two_factor_smooth has K = 2, so only K = 3 is above it)."""
    from pyrofail.analyze import build_parser, resolve
    from pyrofail.sweep import expand

    configs = expand(resolve(build_parser().parse_args(argv)))
    got = {c.latent_dim: c.learn_noise for c in configs}
    assert got == learned
    assert all(type(c.learn_noise) is bool for c in configs)


def test_a_users_data_learns_its_noise_under_the_table1_preset():
    from pyrofail.analyze import build_parser, resolve

    options = resolve(build_parser().parse_args(["--preset", "table1", "--data", "diabetes"]))
    assert options["learn_noise"] is True
