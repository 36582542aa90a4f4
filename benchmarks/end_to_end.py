"""End to end: the default ``python -m pyrofail.analyze`` and the ``table1`` preset, as a user
runs them (a fresh process each), with wall time and peak memory.

Targets: the default under two minutes and ``--preset table1`` under
30 minutes on two CPU cores; the table reports the core count beside them.
"""

from __future__ import annotations

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


def run(quick: bool = False, table1: bool = False, keep: str | None = None) -> list[Row]:
    n = cores()
    wall, rss = _analyze(keep=keep, name="default") if not quick else _analyze("--preset", "tiny")
    name = "default analyze" if not quick else "tiny analyze"
    rows = [Row(f"{name} ({n} cores)", wall, 120.0, "s", "< 120 s", wall < 120.0, f"peak {rss:.0f} MiB")]
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
