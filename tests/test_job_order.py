"""The jobs stage starts the longest jobs first, so that the last worker does not run a long
job alone; the order is the only thing that changes (each job is a pure function of its config)."""

from pyrofail.presets import PRESETS
from pyrofail.records import RunFolder
from pyrofail.runs import atomic_write_json
from pyrofail.stages import jobs as stage
from pyrofail.sweep import expand


def test_the_jobs_stage_submits_the_longest_jobs_first(tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr(stage, "run_tasks", lambda fn, tasks, *a, **k: submitted.extend(t[0] for t in tasks))
    options = {**PRESETS["table1"], "preset": "table1"}
    configs = expand(options)
    atomic_write_json(
        tmp_path / "config.json", {"format": 2, "options": options, "jobs": [c.to_dict() for c in configs]}
    )
    stage.run(RunFolder.open(tmp_path))
    assert sorted(map(stage.job_id, submitted)) == sorted(map(stage.job_id, configs))  # every job, once
    costs = [stage.cost(c) for c in submitted]
    assert costs == sorted(costs, reverse=True)
    # table1: IWAE's 20 particles per point first, the largest K first within each objective
    assert [(c.objective, c.latent_dim) for c in submitted[:2]] == [("iwae", 3), ("iwae", 3)]
    assert [(c.objective, c.latent_dim) for c in submitted[-2:]] == [("elbo", 1), ("elbo", 1)]
