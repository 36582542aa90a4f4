"""The regression stage: run from the CLI's options, written once, read back into the report."""

import json

from pyrofail.analyze import main
from pyrofail.records.config import RunOptions
from pyrofail.records.regression import RegressionRecord
from pyrofail.report import RunRecords
from pyrofail.report.regression import section as section_regression
from pyrofail.stages.regression import run_process

OPTIONS = RunOptions(
    **{
        "regression": ["bimodal"],
        "bnn_methods": ["mean_field", "noise_constrained"],
        "bnn_hidden": [4],
        "bnn_sizes": {"n_train": 40, "n_test": 30},
        "bnn_options": {
            "mean_field": {"steps": 30, "num_draws": 10},
            "noise_constrained": {"steps": 30, "num_draws": 10, "lams": [10.0]},
        },
        "seed": 0,
    }
)


def test_a_process_is_written_once_and_reported_with_its_paired_difference(tmp_path):
    folder = tmp_path / "regression"
    folder.mkdir()
    (tmp_path / "figures").mkdir()
    record = run_process("bimodal", OPTIONS, folder, tmp_path / "figures")
    assert [r.method for r in record.rows] == ["truth", "mean_field", "noise_constrained"]
    assert (tmp_path / "figures" / "bnn-bimodal.png").exists()
    on_disk = RegressionRecord.from_json(json.loads((folder / "bimodal.json").read_text()))
    assert on_disk.rows[2].estimates["paired_diff"].stderr > 0
    # the same options read the stored record back instead of fitting again
    stamp = (folder / "bimodal.json").stat().st_mtime_ns
    assert run_process("bimodal", OPTIONS, folder, tmp_path / "figures") == on_disk
    assert (folder / "bimodal.json").stat().st_mtime_ns == stamp

    res = RunRecords(options=RunOptions(), jobs=[], failed={}, regression={"bimodal": on_disk})
    text = "\n".join(section_regression(res))
    assert "| noise_constrained |" in text and "### bimodal" in text
    assert "- noise_constrained against mean_field: test log-likelihood" in text


def test_no_regression_processes_no_section():
    assert section_regression(RunRecords(options=RunOptions(), jobs=[], failed={})) == []


def test_a_bad_regression_name_or_method_exits_2(tmp_path, capsys):
    for argv, message in (
        (["--regression", "nope"], "unknown --regression 'nope'"),
        (["--bnn-methods", "vi"], "unknown --bnn-methods 'vi'"),
    ):
        assert main(["--preset", "tiny", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
