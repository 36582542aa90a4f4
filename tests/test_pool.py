"""The local process pool: its workers do not outlive the run that started them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pyrofail.stages.pool import run_tasks

    def linger(folder, i):
        open(os.path.join(folder, f"worker-{i}"), "w").write(str(os.getpid()))
        time.sleep(60)

    if __name__ == "__main__":
        run_tasks(linger, [(sys.argv[1], 0), (sys.argv[1], 1)], workers=2)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="reparenting of orphans as on Linux")
def test_workers_end_when_the_run_is_killed(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    run = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        files = [tmp_path / f"worker-{i}" for i in range(2)]
        deadline = time.monotonic() + 60
        while not all(f.exists() and f.read_text() for f in files):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        pids = [int(f.read_text()) for f in files]
        os.kill(run.pid, signal.SIGKILL)  # no cleanup in the run: only the workers' own watch
        run.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in pids if _alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, "workers outlived the run (they sleep 60 s)"
    finally:
        run.kill()
