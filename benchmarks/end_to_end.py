"""End to end: the default ``python -m pyrofail.analyze`` and the ``table1`` preset, as a user
runs them (a fresh process each), with wall time and peak memory.

Targets: the default at most 60 s on two quiet cores, and at most 1.6 times its quiet time when
one CPU-bound process (a pure-Python busy loop, like another program on a laptop) shares the
cores; ``--preset table1`` under 30 minutes. The busy run follows the quiet one in the same
command, so that the ratio compares like with like; the table reports the core count and the
load average at the start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, cores, peak_rss_mib


def _analyze(*args: str, keep: str | None = None, name: str = "run") -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``python -m pyrofail.analyze`` run; its run
    folder is kept under ``keep`` if given (for its report), else thrown away."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(keep or tmp) / name
        before = peak_rss_mib(children=True)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pyrofail.analyze", "--quiet", "--out", str(out), *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        # ru_maxrss of children is the largest child so far: valid when this run is the largest
        return wall, max(before, peak_rss_mib(children=True))


@contextlib.contextmanager
def _busy():
    """One CPU-bound process beside the measured one for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def run(quick: bool = False, table1: bool = False, keep: str | None = None) -> list[Row]:
    n = cores()
    args = ("--preset", "tiny") if quick else ()
    name = "tiny analyze" if quick else "default analyze"
    load = os.getloadavg()[0]
    wall, rss = _analyze(*args, keep=keep, name="default")
    with _busy():
        busy, _ = _analyze(*args, name="default-busy")
    rows = [
        Row(
            f"{name} ({n} cores, load {load:.1f} at start)",
            wall,
            60.0,
            "s",
            "<= 60 s",
            wall <= 60.0,
            f"peak {rss:.0f} MiB",
        ),
        Row(
            f"{name} beside one CPU-bound process, against the quiet run",
            busy,
            wall,
            "s",
            "<= 1.6x",
            busy <= 1.6 * wall,
            "the same command, run after the quiet one",
        ),
    ]
    if table1:
        wall, rss = _analyze("--preset", "table1", "--workers", "2", keep=keep, name="table1")
        rows.append(
            Row(
                f"table1 preset, --workers 2 ({n} cores)",
                wall,
                1800.0,
                "s",
                "< 1800 s",
                wall < 1800.0,
                f"peak {rss:.0f} MiB per process",
            )
        )
    return rows
