"""experiment: the table of methods on a process, and the predictive-bands figure."""

import math

import pytest

from pyrofail.analysis.figures.bnn import predictive_bands
from pyrofail.bnn import Estimate, experiment, format_table
from pyrofail.errors import UsageError

TINY = {
    "mean_field": {"steps": 30, "num_draws": 10},
    "noise_constrained": {"steps": 20, "num_draws": 10, "lam": 10.0},
}


def test_a_tiny_experiment_pairs_methods_on_the_same_test_points(tmp_path):
    ex = experiment(
        "bimodal",
        ("mean_field", "noise_constrained"),
        n_train=30,
        n_test=25,
        hidden=(4,),
        num_z=5,
        options=TINY,
    )
    assert [r["method"] for r in ex.rows] == ["truth", "mean_field", "noise_constrained"]
    truth, mf, nc = ex.rows
    assert math.isfinite(truth["test_ll"].mean)
    fitted = truth["seconds"] is not None  # the truth row has no fit, so no fit time
    assert not fitted
    assert mf["paired_diff"] is None and nc["lam"] == 10.0
    diff = (
        ex.evaluations["noise_constrained"].per_point["test_ll"]
        - ex.evaluations["mean_field"].per_point["test_ll"]
    ).mean()
    assert nc["paired_diff"].mean == pytest.approx(float(diff), abs=1e-6)
    assert nc["test_ll"].mean - mf["test_ll"].mean == pytest.approx(nc["paired_diff"].mean, abs=1e-5)
    table = ex.table()
    assert table.count("\n") == 4 and "| noise_constrained |" in table
    path = predictive_bands(
        ex.results, ex.data.x_train, ex.data.y_train, tmp_path / "bands.png", title="bimodal"
    )
    assert path.stat().st_size > 1000


def test_diabetes_has_no_truth_row():
    ex = experiment("diabetes", ("mean_field",), n_train=40, n_test=20, hidden=(4,), num_z=5, options=TINY)
    assert [r["method"] for r in ex.rows] == ["mean_field"]
    assert ex.results["mean_field"].x_train.shape == (40, 10)
    with pytest.raises(UsageError, match="one input"):
        predictive_bands(ex.results, ex.data.x_train, ex.data.y_train, "unused.png")


def test_format_table_and_bad_names():
    text = format_table(
        [
            {
                "method": "m",
                "seconds": 2.0,
                "lam": 0.5,
                "test_ll": Estimate(-1.25, 0.05),
                "hsic": Estimate(0.001, 0.0002),
            }
        ]
    )
    assert "| m | 2 | 0.5 | -1.250 ± 0.050 |" in text and "0.0010 ± 0.0002" in text
    with pytest.raises(UsageError, match="unknown regression 'nope'"):
        experiment("nope")
    with pytest.raises(UsageError, match="inference 'vi'"):
        experiment("bimodal", ("vi",))
