"""Reliability: bad input gives one clear line, killed runs resume to the same numbers."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import pyrofail as pf
from pyrofail import zoo
from pyrofail.analysis import reference
from pyrofail.analyze import main
from pyrofail.errors import UsageError
from pyrofail.runs import load_checkpoint

TINY = ["--preset", "tiny", "--quiet", "--steps", "20", "--restarts", "2"]


def _foreign_run(tmp_path):
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 0, "options": {}}))
    return run


def _garbage(tmp_path, name="garbage.bin"):
    path = tmp_path / name
    path.write_bytes(b"\x00not a checkpoint\xff" * 10)
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


# Command-line inputs: (arguments, text that the one-line message must contain)
CLI_CASES = [
    (["--model", "figure9"], "unknown --process 'figure9'; choose one of: clusters, degenerate_line, "),
    (["--guide", "gauss"], "unknown --guide 'gauss'; choose one of:"),
    (["--objective", "kl"], "unknown --objective 'kl'; choose one of:"),
    (["--latent-dim", "0"], "--latent-dim=0 is not allowed; expected an integer >= 1"),
    (["--restarts", "0"], "--restarts=0 is not allowed"),
    (["--steps", "0"], "--steps=0 is not allowed"),
    (["--batch-size", "-3"], "--batch-size=-3 is not allowed"),
    (["--n-train", "0"], "--n-train=0 is not allowed"),
    (["--hidden", "50,0"], "--hidden=0 is not allowed"),
    (["--lr", "0"], "--lr=0.0 is not allowed; expected a finite number > 0"),
    (["--lr", "inf"], "--lr=inf is not allowed"),
    (["--noise-scale", "-0.1"], "--noise-scale=-0.1 is not allowed"),
    (["--num-particles", "0"], "--num-particles=0 is not allowed"),
    (["--device", "tpu"], "--device 'tpu' is not allowed; use cpu or cuda"),
    (["--workers", "0"], "--workers=0 is not allowed"),
    (["--truth-option", "figure8.width=2"], "figure8 has no option 'width'; choose one of: scale"),
    (["--truth-option", "clusters.scale=2"], "'clusters' is not in --process (figure8)"),
    (["--truth-option", "scale"], "--truth-option 'scale' is not KEY=VALUE"),
    (["--latent-dim", "1,two"], "'1,two' is not a comma-separated list of ints"),
    (["--objective", "elbo,elbo"], "--objective lists a value twice"),
    (["--init", "best"], "invalid choice: 'best'"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[c[1][:40] for c in CLI_CASES])
def test_cli_bad_input(argv, message, capsys, tmp_path):
    assert main(TINY + argv + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


RESUME_CASES = [
    (lambda p: [str(p / "missing")], "no such run folder"),
    (lambda p: [str(_garbage(p))], "no such run folder"),
    (lambda p: [str(_foreign_run(p))], "not a pyrofail run folder of format"),
    (lambda p: [str((p / "empty").mkdir() or p / "empty")], "config.json does not exist"),
]


@pytest.mark.parametrize("make, message", RESUME_CASES)
def test_cli_bad_resume_folder(make, message, capsys, tmp_path):
    assert main(["--resume", *make(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_conflicting_and_clobbering_options(capsys, tmp_path):
    assert main(["--resume", str(tmp_path), "--process", "figure8"]) == 2
    assert "--resume takes the options of the run; drop --process" in capsys.readouterr().err
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(TINY + ["--out", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# Python API inputs: (callable, text that the UsageError message must contain)
def _fit(**kw):
    truth = zoo.model("figure8")
    x = kw.pop("x", truth.sample(50, seed=0).x)
    options = dict(restarts=1, steps=2, pretrain_steps=1, hidden=(4,))
    return pf.fit(x, truth=truth, **{**options, **kw})


API_CASES = [
    (lambda p: _fit(restarts=0), "restarts=0"),
    (lambda p: _fit(lr=-1.0), "lr=-1.0"),
    (lambda p: _fit(noise_scale=0.0), "noise_scale=0.0"),
    (lambda p: _fit(x=torch.full((5, 2), float("inf"))), "NaN or infinite values"),
    (lambda p: _fit(x=torch.zeros(5, 4)), "x has 4 columns but the process has data_dim=2"),
    (lambda p: _fit(guide="nope"), "unknown guide 'nope'"),
    (lambda p: _fit(checkpoint=_garbage(p)), "is not a pyrofail checkpoint"),
    (lambda p: _fit(checkpoint=_pickle(p, _Evil())), "is not a pyrofail checkpoint"),
    (lambda p: _fit(checkpoint=_pickle(p, {"format": 99})), "is not a pyrofail checkpoint of format"),
    (lambda p: load_checkpoint(p / "none.ckpt"), "does not exist"),
    (lambda p: reference.load(_garbage(p, "ref.nc")), "is not a netCDF reference posterior"),
    (lambda p: zoo.model("figure9"), "unknown model 'figure9'"),
    (lambda p: zoo.names("models"), "unknown registry kind 'models'"),
    (
        lambda p: zoo.model("linear_gaussian", latent_dim=2, data_dim=3, weight=torch.zeros(2, 2)),
        "weight has shape (2, 2)",
    ),
]


def _pickle(tmp_path, obj):
    path = tmp_path / "file.ckpt"
    torch.save(obj, path) if isinstance(obj, dict) else path.write_bytes(pickle.dumps(obj))
    return path


@pytest.mark.parametrize("call, message", API_CASES, ids=[c[1][:40] for c in API_CASES])
def test_python_bad_input(call, message, tmp_path, capfd):
    with pytest.raises(UsageError) as exc:
        call(tmp_path)
    assert message in str(exc.value)
    assert "unsafe" not in capfd.readouterr().out  # nothing in a foreign file was executed


def _run(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "pyrofail.analyze", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kw,
    )


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL a run at random moments several times; resuming it to completion gives
    byte-identical metrics to a run that was never interrupted."""
    args = ["--preset", "tiny", "--quiet", "--steps", "150", "--restarts", "2", "--seed", "3"]
    whole = tmp_path / "whole"
    assert _run(args + ["--out", str(whole)]).wait() == 0
    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        started = (run / "config.json").exists()
        proc = _run(["--resume", str(run), "--quiet"] if started else args + ["--out", str(run)])
        # kill at a random moment once the run is under way (imports take a while)
        while proc.poll() is None and not (run / "config.json").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.5, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be killed; lengthen it"
    assert _run(["--resume", str(run), "--quiet"]).wait() == 0
    assert (run / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    assert not list(run.rglob(".*.tmp"))


def test_truth_options_reach_each_job_and_name_its_folder():
    from pyrofail.analyze import build_parser, resolve
    from pyrofail.records.folder import job_id, truth_of
    from pyrofail.sweep import expand

    args = ["--preset", "tiny", "--process", "figure8,clusters", "--truth-noise", "0.1414"]
    jobs = expand(resolve(build_parser().parse_args([*args, "--truth-option", "figure8.scale=1"])))
    by_model = {j.process: j for j in jobs if j.objective == "elbo"}
    assert by_model["figure8"].truth_options == {"scale": 1} and by_model["figure8"].truth_noise == 0.1414
    clusters = by_model["clusters"]
    assert "truth_options" not in clusters.to_dict() and clusters.truth_noise == 0.1414
    assert job_id(by_model["figure8"]) == "figure8-scale1-s0.1414-K1-mean_field-elbo"
    assert truth_of(by_model["figure8"]).decoder.scale == 1.0
    plain = expand(resolve(build_parser().parse_args(["--preset", "tiny"])))
    assert "truth_options" not in plain[0].to_dict() and job_id(plain[0]) == "figure8-K1-mean_field-elbo"
