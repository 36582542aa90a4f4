"""A user's data through the command line: a CSV written here, the run folder it gives, and
bad input ending in one line and exit status 2 with no run folder."""

import math
import re

import numpy as np
import pytest
import torch

from pyrofail.analyze import main
from pyrofail.data import Dataset, split
from pyrofail.records import JobRecord, RunFolder
from pyrofail.records.data import DataRecord
from pyrofail.records.verdict import Verdicts
from tests.report_checks import summary_lines, unmarked_numbers

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
    argv = ["--data", str(table), "--columns", "a,b,c", "--labels", "cls", "--folds", "1"]
    assert main(TINY + argv + ["--out", str(out)]) == 0
    data = RunFolder.read(DataRecord, out / "data.json")
    assert data.features == ["a", "b", "c"]
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert jobs == ["curve-K1-mean_field-elbo", "curve-K1-mean_field-iwae"]
    record = RunFolder.read(JobRecord, out / "jobs" / jobs[0] / "metrics.json")
    assert record.metrics.mleo is None  # no truth to measure against
    assert record.metrics.log_px_method == "grid" and record.metrics.test_neg_log_px.exact
    assert "curve" in (out / "report.md").read_text()


def test_a_small_table_is_cross_fitted_so_that_every_row_is_a_test_point(table, tmp_path):
    out = tmp_path / "folds"
    assert main(TINY + ["--data", str(table), "--columns", "a,b,c", "--out", str(out)]) == 0
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert len(jobs) == 10 and jobs[0] == "curve-K1-mean_field-elbo-fold0"  # 5 folds by default
    folder = RunFolder.open(out)
    pooled, points, _ = folder.results()
    assert [r.job for r in pooled] == ["curve-K1-mean_field-elbo", "curve-K1-mean_field-iwae"]
    assert pooled[0].metrics.n_test == 200 == len(points[pooled[0].job].log_px)
    tested = sorted(i for f in range(5) for i in RunFolder.read(DataRecord, out / "data.json").rows[f].test)
    assert tested == list(range(200))  # the folds' test parts partition the rows
    report = (out / "report.md").read_text()
    assert "| curve-K1-mean_field-elbo |" in report
    # the Data section describes the folds, not one fold's split, and the figures it links exist
    assert "5-fold cross-fitting" in report and "each of the 200 rows is a test point once" in report
    linked = re.findall(r"\]\((jobs/[^)]+\.png)\)", report)
    assert linked and all((out / f).is_file() for f in linked)
    # --no-reference: the summary comes first and says why there is no verdict
    assert summary_lines(report)[1].startswith("- No diagnosis in this run")
    assert unmarked_numbers(report) == []


def test_log_px_on_a_users_table_is_the_exact_integral_even_at_a_heavy_tailed_row(tmp_path):
    """K = 1: the reported test -log p(x) is the integral over z, checked against a dense
    trapezoid rule computed here; a row far out in one column (where importance sampling from
    the guide was nats off with a tiny standard error) is one of the test rows."""
    rng = np.random.default_rng(1)
    u = rng.normal(size=60)
    rows = ["a,b"] + [f"{v:.4f},{2 * v + 0.3 * rng.normal():.4f}" for v in u]
    # the heavy-tailed row, placed at the first test row of the run's split (seed 0, 60/20/20)
    heavy = int(split(Dataset(torch.zeros(60, 2)), seed=0).index["test"][0])
    rows[1 + heavy] = "0.1,25.0"  # after the header
    path = tmp_path / "heavy.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(TINY + ["--data", str(path), "--folds", "1", "--objective", "elbo", "--out", str(out)]) == 0
    folder = RunFolder.open(out)
    (record,) = folder.finished_jobs()
    model, _ = folder.fitted(record)
    x = folder.test_data(record.job)["x"].double()
    assert bool((x.abs() > 4).any()), "the heavy row is a test row"
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        lj = model.double().log_joint(z, x)  # (G, N)
    log_px = torch.logsumexp(lj, 0) + math.log(float(z[1, 0, 0] - z[0, 0, 0]))
    reported = record.metrics.test_neg_log_px
    assert reported.exact and reported.mean == pytest.approx(-float(log_px.mean()), abs=2e-3)
    points = folder.test_points(record.job)
    assert torch.allclose(torch.tensor(points.log_px, dtype=torch.float64), log_px, atol=2e-3)


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
        (["--columns", "a,b"], "--columns describes --data; give --data"),
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


def _write(path, header, rows):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_twelve_row_table_is_undetermined_and_says_how_many_rows_it_needs(tmp_path):
    rng = np.random.default_rng(2)
    rows = [f"{u:.4f},{2 * u + 0.3 * rng.normal():.4f}" for u in rng.normal(size=12)]
    table = _write(tmp_path / "twelve.csv", "a,b", rows)
    out = tmp_path / "run"
    assert (
        main(["--preset", "tiny", "--quiet", "--steps", "20", "--data", str(table), "--out", str(out)]) == 0
    )
    verdicts = RunFolder.read(Verdicts, out / "verdicts.json").verdicts
    (verdict,) = verdicts.values()
    assert (verdict.failure, verdict.reason) == ("undetermined", "too-few-rows")
    assert verdict.evidence.n_test == 12  # cross-fitted: every row a test point
    report = (out / "report.md").read_text()
    assert f"12 test rows, about {verdict.evidence.rows_needed} needed" in report


def test_a_five_row_table_ends_in_one_line_and_writes_nothing(tmp_path, capsys):
    table = _write(tmp_path / "five.csv", "a,b", [f"{i},{2 * i}" for i in range(5)])
    out = tmp_path / "run"
    assert main(TINY + ["--data", str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data have 5 rows, too few" in err[0] and "2 test rows" in err[0]
    assert not out.exists()


def test_a_header_of_numbers_and_a_semicolon_file_are_caught_in_the_users_spelling(tmp_path, capsys):
    numbers = _write(tmp_path / "noheader.csv", "1.0,2.0", [f"{i},{2 * i}" for i in range(40)])
    assert main(TINY + ["--data", str(numbers), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "the first line of" in err and "is all numbers (1.0, 2.0)" in err and "--no-header" in err
    semicolons = _write(tmp_path / "semi.csv", "a;b", [f"{i};{2 * i}" for i in range(40)])
    assert main(TINY + ["--data", str(semicolons), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "seem to be separated by semicolons; pass --delimiter ';'" in err
    # and both read with the options they name
    argv = ["--data", str(semicolons), "--delimiter", ";", "--folds", "1", "--out", str(tmp_path / "c")]
    assert main(TINY + argv) == 0
    assert (
        main(TINY + ["--data", str(numbers), "--no-header", "--folds", "1", "--out", str(tmp_path / "d")])
        == 0
    )
    data = RunFolder.read(DataRecord, tmp_path / "d" / "data.json")
    sizes = data.sizes  # the first line is data
    assert data.features == ["x0", "x1"] and sizes.train + sizes.val + sizes.test == 41


def test_above_k_2_log_px_is_sampled_with_each_rows_k_hat_counted_and_flagged(table, tmp_path):
    """K = 3: no grid, so log p(x) is importance-sampled from the guide; every test row's PSIS
    k-hat is recorded, the rows above 0.7 are counted, and a count or a missed standard-error
    target is flagged beside the number in the report (a 20-step fit: its guide is poor, so
    both happen here)."""
    out = tmp_path / "k3"
    argv = ["--data", str(table), "--columns", "a,b,c", "--latent-dim", "3", "--folds", "1"]
    assert main(TINY + argv + ["--objective", "elbo", "--out", str(out)]) == 0
    folder = RunFolder.open(out)
    (record,) = folder.finished_jobs()
    m = record.metrics
    k_hat = folder.test_points(record.job).pareto_k
    assert m.log_px_method.startswith("is") and not m.test_neg_log_px.exact
    assert len(k_hat) == m.n_test and m.pareto_k_bad == sum(k > 0.7 for k in k_hat) > 0
    assert f"k̂ > 0.7 at {m.pareto_k_bad} of {m.n_test} points" in m.test_neg_log_px.flag
    report = (out / "report.md").read_text()
    assert f"({m.log_px_method}, {m.pareto_k_bad} k̂ > 0.7)" in report
