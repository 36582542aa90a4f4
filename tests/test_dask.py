"""The stages on a real Dask cluster (a scheduler and two worker processes on localhost): the
same numbers as in-process, and the same numbers after a worker dies mid-sweep."""

import importlib.util
import json
import os
import signal
import sys
import threading
import time

import pytest
import torch

from pyrofail import analyze

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("distributed") is None,
    reason='Dask is an optional extra: pip install -c constraints.txt ".[dask]"',
)

# two jobs (elbo, iwae), long enough that a worker can be killed while one is fitting
SWEEP = ["--preset", "tiny", "--no-reference", "--init", "random", "--steps", "200", "--quiet"]


def test_without_dask_the_scheduler_option_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    out = tmp_path / "run"
    assert analyze.main([*SWEEP, "--scheduler", "local", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0] and ".[dask]" in err[0]
    assert not out.exists()  # nothing started


@pytest.fixture(scope="module")
def cluster():
    import distributed

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    ) as c:
        yield c


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The sweep in this process with one torch thread, as each Dask worker has."""
    out = tmp_path_factory.mktemp("local") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert analyze.main([*SWEEP, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
@needs_dask
def test_a_sweep_on_a_cluster_gives_the_numbers_of_one_in_process(cluster, in_process, tmp_path):
    out = tmp_path / "run"
    assert analyze.main([*SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out)]) == 0
    assert len(in_process["jobs"]) == 2
    assert json.loads((out / "metrics.json").read_text()) == in_process


@pytest.mark.slow
@needs_dask
def test_a_worker_killed_mid_sweep_has_its_task_rerun(cluster, in_process, tmp_path):
    out = tmp_path / "run"
    result = {}
    sweep = threading.Thread(
        target=lambda: result.setdefault(
            "status", analyze.main([*SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out)])
        )
    )
    import distributed

    with distributed.Client(cluster.scheduler_address) as client:
        sweep.start()
        victim, job, killed_at = _kill_a_worker_while_it_fits(client, out, deadline=time.time() + 40)
        sweep.join(timeout=120)
    assert not sweep.is_alive() and result["status"] == 0
    assert victim is not None, "no job was seen fitting on a worker"
    # the killed worker's job finished after the kill: it was rerun, and from its checkpoint
    assert (job / "metrics.json").stat().st_mtime > killed_at
    assert json.loads((out / "metrics.json").read_text()) == in_process


def _kill_a_worker_while_it_fits(client, out, deadline):
    """SIGKILL the worker process running a job that has started (its ``config.json`` is
    written) and not finished; returns ``(worker, job folder, time)``."""
    while time.time() < deadline:
        for worker, keys in client.processing().items():
            for key in keys:
                if not str(key).startswith("run_job-"):
                    continue
                job = _job_folder(out, int(str(key).split("-")[1]))
                if job is not None and (job / "config.json").exists() and not (job / "metrics.json").exists():
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    return worker, job, time.time()
        time.sleep(0.05)
    return None, None, None


def _job_folder(out, index):
    config = out / "config.json"
    if not config.exists():
        return None
    from pyrofail.records import RunFolder

    return RunFolder.open(out).job_dir(RunFolder.open(out).jobs[index])


@pytest.mark.parametrize("value", ["", "foo", "bogus://x:1", "tcp://host", "tcp://:8786", "host:99999"])
def test_a_bad_scheduler_address_is_one_line_and_exit_2(value, tmp_path, capsys):
    # checked before Dask is imported or anything is contacted: needs no cluster, nor Dask
    out = tmp_path / "run"
    assert analyze.main([*SWEEP, "--scheduler", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scheduler" in err[0] and "tcp://HOST:PORT" in err[0]
    assert not out.exists()
