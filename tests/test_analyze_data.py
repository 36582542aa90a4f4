"""A user's data through the command line: a CSV written here, the run folder it gives, and
bad input ending in one line and exit status 2 with no run folder."""

import json

import numpy as np
import pytest

from pyrofail.analyze import main

TINY = ["--preset", "tiny", "--quiet", "--steps", "20", "--restarts", "2", "--no-reference"]


@pytest.fixture
def table(tmp_path):
    """200 rows of a noisy curve in three columns and a text label."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    rows = ["a,b,c,cls"] + [
        f"{u:.4f},{np.sin(2 * u) + 0.1 * rng.normal():.4f},{u * u + 0.1 * rng.normal():.4f},"
        f"{'yes' if u > 0 else 'no'}"
        for u in z
    ]
    path = tmp_path / "curve.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_csv_runs_end_to_end_without_a_ground_truth(table, tmp_path):
    out = tmp_path / "run"
    assert (
        main(TINY + ["--data", str(table), "--columns", "a,b,c", "--labels", "cls", "--out", str(out)]) == 0
    )
    data = json.loads((out / "data.json").read_text())
    assert data["features"] == ["a", "b", "c"]
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert jobs == ["curve-K1-mean_field-elbo", "curve-K1-mean_field-iwae"]
    metrics = json.loads((out / "jobs" / jobs[0] / "metrics.json").read_text())["metrics"]
    assert "mleo" not in metrics  # no truth to measure against
    assert metrics["log_px_method"].startswith("is")
    assert "curve" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "{dir}/nope.csv"], "nope.csv' does not exist; expected a .csv, .npy, .npz file"),
        (["--data", "{table}"], "column 'cls' of {table} is not numeric"),
        (["--data", "{table}", "--columns", "a,zz"], "column 'zz' is not in {table}; its columns are"),
        (["--data", "{table}", "--labels", "nope"], "labels column 'nope' is not in {table}"),
        (
            ["--data", "{table}", "--columns", "a,b,c", "--split", "0.5,0.6"],
            "--split 0.5,0.6 is not allowed; expected three numbers in (0, 1)",
        ),
        (["--data", "{table}", "--columns", "a,b", "--likelihood", "bernoulli"], "needs 0/1 data"),
        (["--data", "wine2"], "unknown data set 'wine2'; choose one of: breast_cancer, diabetes"),
        (["--columns", "a,b"], "describe --data; give --data"),
    ],
)
def test_bad_data_input_exits_2_with_one_line(argv, message, table, tmp_path, capsys):
    subst = {"dir": tmp_path, "table": table}
    argv = [a.format(**subst) for a in argv]
    out = tmp_path / "run"
    assert main(TINY + argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message.format(**subst) in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "config.json").exists()
