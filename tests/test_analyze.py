"""The command line: a tiny end-to-end run, its run folder, and clear errors for bad input."""

import json
import subprocess
import sys

import pytest

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


def test_resume_of_a_finished_run_recomputes_nothing(tiny_run, capsys):
    before = (tiny_run / "metrics.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in tiny_run.glob("jobs/*/model.pt")}
    assert main(["--resume", str(tiny_run), "--quiet"]) == 0
    assert (tiny_run / "metrics.json").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "figure9"], "unknown model 'figure9'; choose one of: clusters, figure8"),
        (["--latent-dim", "0"], "--latent-dim=0 is not allowed; expected an integer >= 1"),
        (["--guide", "gauss"], "unknown guide 'gauss'"),
        (["--objective", "kl"], "unknown objective 'kl'"),
        (["--restarts", "0"], "--restarts=0 is not allowed"),
        (["--steps", "-5"], "--steps=-5 is not allowed"),
        (["--lr", "-0.1"], "--lr=-0.1 is not allowed"),
        (["--device", "tpu"], "--device 'tpu' is not allowed"),
        (["--latent-dim", "1,x"], "'1,x' is not a comma-separated list of ints"),
        (["--model", "figure8,figure8"], "--model lists a value twice"),
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
    assert proc.stderr.strip().endswith("linear_gaussian, quadratic")


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
    ):
        assert flag in out


def test_list_prints_the_registry(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "figure8" in out and "mean_field" in out and "iwae" in out
