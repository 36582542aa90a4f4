"""The no-truth benchmark's two arms see the same points and fit alike: its CSV's seeded split is
the process run's split, row for row, and both command lines resolve to the same fit options."""

import pytest
import torch

import pyrofail as pf
from benchmarks.no_truth import Case, agreement, command, markdown, sizes, write_csv
from pyrofail.analyze import build_parser, resolve
from pyrofail.data import load_splits, make_splits
from pyrofail.stages.jobs import FIT_KEYS
from pyrofail.sweep import expand


@pytest.mark.parametrize("case", [Case("figure8", 60, 3), Case("linear_gaussian", 41, 0)])
def test_the_csv_splits_into_the_process_runs_parts(case, tmp_path):
    path = tmp_path / "points.csv"
    assert write_csv(case, path) == pf.zoo.model(case.process).latent_dim
    part = sizes(case.n)
    drawn = make_splits(pf.zoo.model(case.process), part["train"], part["val"], part["test"], seed=case.seed)
    read = load_splits(str(path), standardize=False, seed=case.seed)
    for name in ("train", "val", "test"):  # exactly: float32 draws survive the text round trip
        assert torch.equal(getattr(read, name).x, getattr(drawn, name).x)


def _jobs(argv):
    out = resolve(build_parser().parse_args(argv))
    return {(j.guide, j.objective): j for j in expand(out)}


def test_both_arms_resolve_to_the_same_fits(tmp_path):
    case = Case("quadratic", 50, 2)
    csv = tmp_path / "points.csv"
    k = write_csv(case, csv)
    fit = {"restarts": 3, "steps": 7}
    truth = _jobs(command(case, "truth", k, csv, tmp_path / "t", fit))
    data = _jobs(command(case, "data", k, csv, tmp_path / "d", fit))
    assert truth.keys() == data.keys() == {("mean_field", "elbo"), ("mean_field", "iwae")}
    for key in truth:
        same = [f for f in FIT_KEYS if f != "noise_scale"]  # σ's start: the last line
        assert {f: getattr(truth[key], f) for f in same} == {f: getattr(data[key], f) for f in same}
        assert truth[key].init == "random" and truth[key].learn_noise is True
        assert truth[key].latent_dim == 1 and truth[key].seed == 2
        # a --data run learns σ from 1 (pyrofail.training.config.resolve); the truth arm says so
        assert data[key].noise_scale is None and truth[key].noise_scale == 1.0


@pytest.mark.parametrize(
    "truth, data, expected",
    [
        ("latent space", "latent space", "agree"),
        ("undetermined", "undetermined", "agree"),
        ("none", "data distribution", "contradicted"),
        ("latent space", "data distribution", "contradicted"),
        ("latent space", "none", "missed"),
        ("data distribution", "undetermined", "missed"),
        ("undetermined", "latent space", "extra"),
    ],
)
def test_agreement(truth, data, expected):
    assert agreement(truth, data) == expected


def test_the_table_has_a_cell_per_column():
    side = {
        "failure": "undetermined",
        "reason": "px-unclear",
        "reference": "points-K1-mean_field-iwae",
        "share_hard": {"mean": 0.5, "stderr": 0.05},
        "cx1_share": 0.1,
        "simpler": {"mean": 0.2, "stderr": 0.01},
        "px_cost": {"mean": 0.03, "stderr": None},
    }
    row = {"process": "figure8", "k": 1, "n": 1000, "n_test": 200, "seed": 0, "same_fits": True}
    lines = markdown([{**row, "truth": side, "data": side, "agreement": "agree"}]).splitlines()
    assert [line.count("|") for line in lines] == [14, 14, 14]
    assert "| iwae |" in lines[2] and "0.030 |" in lines[2]
