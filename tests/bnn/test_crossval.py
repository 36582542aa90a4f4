"""K-fold cross-validation on diabetes: the folds partition the data, and the pooled comparison."""

import doctest
import json
import math

import pytest
import torch
from sklearn.datasets import load_diabetes as sk_load_diabetes

from pyrofail.bnn import Estimate, cross_validate, crossval
from pyrofail.errors import UsageError
from pyrofail.models import regression
from pyrofail.models.regression import Diabetes, load_diabetes

N = 442
TINY = {
    "mean_field": {"steps": 20, "num_draws": 10},
    "noise_constrained": {"steps": 20, "num_draws": 10, "lam": 10.0},
}


def _raw():
    x, y = sk_load_diabetes(return_X_y=True, scaled=False)
    return torch.as_tensor(x, dtype=torch.get_default_dtype()), torch.as_tensor(
        y, dtype=torch.get_default_dtype()
    )


@pytest.mark.parametrize("seed, folds", [(0, 5), (1, 5), (0, 3)])
def test_folds_partition_the_442_points_and_use_training_statistics(seed, folds):
    x, y = _raw()
    tests = []
    for k in range(folds):
        d = load_diabetes(seed=seed, fold=k, folds=folds)
        train, test = d.train_index, d.test_index
        assert len(train) + len(test) == N
        assert set(train.tolist()).isdisjoint(test.tolist())
        # near-equal blocks: sizes floor(N / folds) or one more
        assert len(test) in (N // folds, N // folds + 1)
        # the values are those rows of the raw data, standardised with the training part's statistics
        x_loc, x_sd = x[train].mean(0), x[train].std(0)
        y_loc, y_sd = y[train].mean(), y[train].std()
        assert torch.allclose(d.x_train, (x[train] - x_loc) / x_sd, atol=1e-6)
        assert torch.allclose(d.x_test, (x[test] - x_loc) / x_sd, atol=1e-6)
        assert torch.allclose(d.y_train, (y[train] - y_loc) / y_sd, atol=1e-6)
        assert torch.allclose(d.y_test, (y[test] - y_loc) / y_sd, atol=1e-6)
        # ... so the training part, not the whole data, has mean 0 and sd 1
        assert abs(float(d.y_train.mean())) < 1e-5 and abs(float(d.y_train.std()) - 1) < 1e-5
        assert abs(float(((y - y_loc) / y_sd).mean())) > 1e-4
        assert torch.equal(Diabetes().splits(seed=seed, fold=k, folds=folds).y_test, d.y_test)
        tests.append(test)
    every = torch.cat(tests)
    assert len(every) == N and torch.equal(every.sort().values, torch.arange(N))
    # the blocks are consecutive pieces of the seeded order of the single split
    assert torch.equal(
        every, torch.cat([load_diabetes(seed=seed).test_index, load_diabetes(seed=seed).train_index])
    )


def test_without_fold_the_single_split_is_unchanged():
    x, y = _raw()
    d = load_diabetes(seed=0)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    test, train = perm[:88], perm[88:]
    assert torch.equal(d.test_index, test) and torch.equal(d.train_index, train)
    expected = (y[test] - y[train].mean()) / y[train].std()
    assert torch.equal(d.y_test, expected)
    assert torch.equal(load_diabetes(seed=0, folds=7).y_test, d.y_test)  # folds alone changes nothing
    assert d.x_train.shape == (354, 10) and d.x_test.shape == (88, 10)
    small = Diabetes().splits(100, 20, seed=0)
    assert torch.equal(small.train_index, d.train_index[:100]) and torch.equal(small.y_test, d.y_test[:20])
    fold_small = Diabetes().splits(50, 10, seed=0, fold=1, folds=4)
    assert torch.equal(fold_small.x_test, load_diabetes(seed=0, fold=1, folds=4).x_test[:10])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fold": 5}, r"fold=5 is not allowed; expected an integer in \[0, 4\] for folds=5"),
        ({"fold": -1}, r"fold=-1 is not allowed; expected an integer in \[0, 4\]"),
        ({"fold": 2, "folds": 2}, r"fold=2 is not allowed; expected an integer in \[0, 1\]"),
        ({"fold": 1.5}, r"fold=1.5 is not an integer"),
        ({"fold": True}, r"fold=True is not an integer"),
        ({"fold": 0, "folds": 1}, r"folds=1 is not allowed; expected an integer >= 2"),
        ({"fold": 0, "folds": 443}, r"folds=443 is not allowed; diabetes has 442 points"),
        ({"folds": "5"}, r"folds='5' is not an integer"),
    ],
)
def test_bad_fold_or_folds_is_a_usage_error(kwargs, message):
    with pytest.raises(UsageError, match=message):
        load_diabetes(**kwargs)
    with pytest.raises(UsageError, match=message):
        Diabetes().splits(**kwargs)


def test_cross_validate_refuses_a_process_without_folds():
    with pytest.raises(UsageError, match="process 'bimodal' has no cross-validation folds"):
        cross_validate("bimodal", ("mean_field",), options=TINY)
    with pytest.raises(UsageError, match="folds=1 is not allowed"):
        cross_validate("diabetes", ("mean_field",), folds=1, options=TINY)


def test_cross_validate_pools_every_point_once_and_pairs_on_all_of_them():
    cv = cross_validate(
        "diabetes", ("mean_field", "noise_constrained"), folds=2, hidden=(4,), num_z=4, options=TINY
    )
    mf, nc = cv.rows
    assert [mf["method"], nc["method"]] == ["mean_field", "noise_constrained"]
    assert cv.fold_sizes == [(221, 221), (221, 221)]
    assert torch.equal(cv.test_index.sort().values, torch.arange(N))
    assert torch.equal(cv.fold_of, torch.tensor([0] * 221 + [1] * 221))
    for method in ("mean_field", "noise_constrained"):
        pp = cv.per_point[method]
        assert (
            pp["test_ll"].shape == (N,) and pp["test_pit"].shape == (N,) and pp["test_sq_err"].shape == (N,)
        )
        assert pp["train_ll"].shape == (N,)  # each point trains in the other fold
    # the pooled test points are each fold's, in fold order, with the values y as seen in that fold
    for k in range(2):
        d = load_diabetes(seed=0, fold=k, folds=2)
        assert torch.equal(cv.test_index[cv.fold_of == k], d.test_index)

    diff = cv.per_point["noise_constrained"]["test_ll"] - cv.per_point["mean_field"]["test_ll"]
    assert mf["paired_diff"] is None and mf["fold_paired_diff"] is None
    assert nc["paired_diff"].mean == pytest.approx(float(diff.double().mean()), abs=1e-9)
    assert nc["paired_diff"].stderr == pytest.approx(float(diff.double().std() / math.sqrt(N)), abs=1e-9)
    assert nc["test_ll"].mean - mf["test_ll"].mean == pytest.approx(nc["paired_diff"].mean, abs=1e-6)
    assert mf["test_ll"].mean == pytest.approx(float(cv.per_point["mean_field"]["test_ll"].double().mean()))
    # per fold: experiment()'s paired differences, whose size-weighted mean is the pooled one
    per_fold = nc["fold_paired_diff"]
    assert len(per_fold) == 2 and all(isinstance(e, Estimate) for e in per_fold)
    for k, e in enumerate(per_fold):
        assert e.mean == pytest.approx(float(diff[cv.fold_of == k].double().mean()), abs=1e-6)
        assert cv.fold_rows[k][1]["paired_diff"] == e
    assert nc["paired_diff"].mean == pytest.approx(sum(e.mean for e in per_fold) / 2, abs=1e-6)
    assert nc["lam"] == [10.0, 10.0] and mf["lam"] is None
    assert nc["fold_heterogeneity"]["df"] == 1 and 0 <= nc["fold_heterogeneity"]["p"] <= 1
    assert mf["seconds"] == pytest.approx(sum(rows[0]["seconds"] for rows in cv.fold_rows))
    sq = cv.per_point["mean_field"]["test_sq_err"].double().mean()
    assert mf["rmse"].mean == pytest.approx(float(sq.sqrt()), rel=1e-9)
    # tables: the pooled one like experiment()'s, and one row per fold plus the pooled row
    assert cv.table().count("\n") == 3 and "| noise_constrained |" in cv.table()
    folds = cv.fold_table().splitlines()
    assert len(folds) == 2 + 2 + 1 and folds[-1].startswith("| pooled |  | 442 |")
    assert str(nc["paired_diff"]) in folds[-1] or f"{nc['paired_diff'].mean:.4f}" in folds[-1]


def test_the_benchmark_records_the_folds(tmp_path, capsys):
    from benchmarks.bnn_nonidentifiability import main

    out = tmp_path / "cv"
    argv = ["--processes", "diabetes", "--methods", "mean_field,noise_constrained", "--folds", "2"]
    argv += ["--hidden", "3", "--steps", "5", "--lam", "10", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2-fold cross-validation" in printed and "| pooled |  | 442 |" in printed
    record = json.loads((out / "rows.json").read_text())["processes"]["diabetes"]
    assert record["folds"] == 2 and [r["method"] for r in record["rows"]] == [
        "mean_field",
        "noise_constrained",
    ]
    assert sorted(record["test_index"]) == list(range(N))
    nc = record["rows"][1]
    assert set(nc["paired_diff"]) == {"value", "stderr"} and len(nc["fold_paired_diff"]) == 2
    ll = record["per_point_test_ll"]
    mean_diff = sum(a - b for a, b in zip(ll["noise_constrained"], ll["mean_field"], strict=True)) / N
    assert nc["paired_diff"]["value"] == pytest.approx(mean_diff, abs=1e-9)


@pytest.mark.parametrize("module", [crossval, regression])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
