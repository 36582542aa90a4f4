"""The run folder's written schema: every record round-trips through JSON, a record of another
version is recomputed and never misread, the documentation names every field, and a new
measure is one record field and one renderer."""

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest

from pyrofail.estimate import Estimate
from pyrofail.records import KINDS, JobRecord, RunFolder, StaleRecord, TestPoints
from pyrofail.records import job as job_records
from pyrofail.records.posterior import Hardness, Quality, TruthHardness
from pyrofail.records.schema import Record
from tests.factories import estimate, job, points, run_folder

ROOT = Path(__file__).resolve().parents[1]


def test_a_job_record_round_trips_through_json_with_non_finite_numbers():
    record = job(test_neg_log_px=estimate(float("inf")), pmo_gap=Estimate(float("nan")))
    back = JobRecord.from_json(json.loads(json.dumps(record.to_json(), allow_nan=False)))
    assert back.metrics.test_neg_log_px.mean == float("inf")
    assert back.metrics.pmo_gap.mean != back.metrics.pmo_gap.mean  # NaN comes back as NaN
    assert dataclasses.replace(back, metrics=record.metrics) == record
    assert dataclasses.replace(back.metrics, pmo_gap=record.metrics.pmo_gap) == record.metrics


def test_a_record_of_another_version_or_kind_is_stale_and_read_as_missing(tmp_path):
    path = tmp_path / "test_points.json"
    RunFolder.write(points(log_px=[1.0, 2.0]), path)
    data = json.loads(path.read_text())
    assert RunFolder.read(TestPoints, path).log_px == [1.0, 2.0]
    for change in ({"version": 1}, {"kind": "job"}, {"surprise": 1}):
        path.write_text(json.dumps({**data, **change}))
        assert RunFolder.read(TestPoints, path) is None
    with pytest.raises(StaleRecord):
        TestPoints.from_json({**data, "version": 99})


def test_cached_recomputes_only_for_another_key(tmp_path):
    quality = Quality("grid", [True], {"any": 0.0}, {})
    hardness = Hardness(estimate(0.2), estimate(0.5), 0.105, [0.2])
    calls = []

    def compute(key):
        calls.append(key)
        return TruthHardness(key, "grid", quality, hardness)

    path = tmp_path / "hardness.json"
    for key in ({"a": 1}, {"a": 1}, {"a": 2}):
        assert RunFolder.cached(path, TruthHardness, key, lambda k=key: compute(k)).key == key
    assert calls == [{"a": 1}, {"a": 2}]


def _fields(cls, seen):
    """Every field name of ``cls`` and of the records nested in it."""
    if cls in seen:
        return set()
    seen.add(cls)
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.add(f.name)
        for arg in (hints[f.name], *typing.get_args(hints[f.name])):
            for inner in (arg, *typing.get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, Record) and dataclasses.is_dataclass(inner):
                    out |= _fields(inner, seen)
    return out


def test_the_run_folder_documentation_names_every_record_and_field():
    doc = (ROOT / "docs" / "run-folder.md").read_text()
    words = set(re.findall(r"`([A-Za-z_0-9]+)`", doc))
    for kind, cls in KINDS.items():
        assert kind in words and cls.__name__ in words, kind
        missing = sorted(_fields(cls, set()) - words)
        assert not missing, f"{cls.__name__}: {missing} are not documented in docs/run-folder.md"


def test_a_new_measure_touches_one_record_and_one_renderer(tmp_path, monkeypatch):
    """The README's how-to, on a toy measure: (1) the function in an analysis module — here
    the mean of the per-point log p(x) squared; (2) one field in the record its stage writes;
    (3) one line in the renderer. Records written before the field existed still read."""
    from pyrofail import report

    def toy(log_px) -> Estimate:  # (1) the measure
        return Estimate.of([v * v for v in log_px])

    @dataclasses.dataclass
    class FitMetrics(job_records.FitMetrics):  # (2) one field, with a default
        toy: Estimate | None = None

    old = job()  # written before the field existed
    monkeypatch.setattr(job_records, "FitMetrics", FitMetrics)
    new = dataclasses.replace(old, metrics=FitMetrics(**vars(old.metrics), toy=toy([1.0, 3.0])))
    folder = run_folder(
        tmp_path, [new, dataclasses.replace(job(k=2), metrics=FitMetrics(**vars(job(k=2).metrics)))]
    )
    res = report.RunRecords.read(folder)
    assert [r.metrics.toy for r in res.jobs] == [Estimate(5.0, 4.0, 2), None]
    assert RunFolder.read(JobRecord, folder.job_dir(new.job) / "metrics.json").metrics.toy.mean == 5.0

    def toy_section(res):  # (3) the renderer's line
        return [f"- {r.job}: toy {report.fits.est(r.metrics.toy)}" for r in res.jobs if r.metrics.toy]

    monkeypatch.setattr(report, "SECTIONS", (*report.SECTIONS, toy_section))
    assert "- figure8-K1-mean_field-elbo: toy 5.000 ± 4.000" in report.markdown(res)


def test_job_configs_and_run_options_are_records_generated_from_the_option_schema():
    """Every option of kind "fit" is a field of the job config and every option of the run a
    field of the run options, with the schema's default, so that adding an option touches the
    schema alone; every preset's configs and options read back to the same JSON; a config with
    a key the schema does not know (format 1's ``model``) is stale, not misread."""
    from pyrofail.analyze import build_parser, resolve
    from pyrofail.options import OPTIONS, defaults, job_names
    from pyrofail.presets import PRESETS
    from pyrofail.records.config import RESOLVED_AWAY, JobConfig, RunOptions
    from pyrofail.runs import dumps
    from pyrofail.sweep import expand

    job_fields = {f.name: f for f in dataclasses.fields(JobConfig)}
    for name in set(job_names()) - set(RESOLVED_AWAY):
        field = job_fields[name]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert default == OPTIONS[name].default, name
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    assert set(defaults()) <= run_fields and run_fields - set(defaults()) == {"preset", "data_options"}
    for preset in PRESETS:
        argv = ["--preset", preset] + (["--data", "diabetes"] if preset == "tiny" else [])
        options = json.loads(dumps(resolve(build_parser().parse_args(argv))))
        assert RunOptions.from_dict(options).to_dict() == options, preset
        for config in expand(options):
            plain = json.loads(dumps(config.to_dict()))
            assert JobConfig.from_dict(plain) == config and plain == config.to_dict(), preset
    with pytest.raises(StaleRecord, match="model"):
        JobConfig.from_dict({"model": "figure8", "latent_dim": 1})
