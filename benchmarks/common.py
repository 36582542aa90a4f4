"""Shared pieces of the benchmarks: timing, peak memory, and the result table."""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the benchmark table: ``measured / baseline`` against a target ratio."""

    name: str
    measured: float
    baseline: float
    unit: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children) in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes (``uptime``'s numbers)."""
    if not hasattr(os, "getloadavg"):
        return "load unknown"
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def devices(choice: str) -> list[str]:
    """The devices to measure on: ``"cpu"``, ``"cuda"``, or ``"auto"`` (the CPU, and the GPU
    beside it when there is one)."""
    import torch

    if choice == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [choice]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | measured | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        base = f"{r.baseline:.3g} {r.unit}" if r.baseline else "—"
        ratio = f"{r.ratio:.3f}" if r.baseline else "—"
        lines.append(f"| {r.name} | {r.measured:.3g} {r.unit} | {base} | {ratio} | {r.target} | {met} |")
        if r.note:
            lines[-1] += f" {r.note}"
    return "\n".join(lines)
