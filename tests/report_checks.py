"""Checks of a rendered report that every run's test applies: the verdict first, and no
number in a table without its standard error or an exactness mark."""

from __future__ import annotations

import re

__all__ = ["summary_lines", "unmarked_numbers"]

_DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+")
# columns whose numbers are diagnostics read against a threshold, not estimates of a mean:
# the median PSIS k-hat (the share above the threshold beside it carries its error)
EXEMPT_COLUMNS = ("PSIS k̂ median",)


def summary_lines(report: str) -> list[str]:
    """The lines of the first section: it must be the summary, right after the header."""
    sections = report.split("\n## ")
    assert len(sections) > 1 and sections[1].startswith("Summary"), sections[1][:40]
    return sections[1].splitlines()[1:]


def unmarked_numbers(report: str) -> list[tuple[str, str]]:
    """``(column, cell)`` of every decimal number in a table that is neither ``x ± se`` nor
    in a cell marked exact (``grid``, ``exact``)."""
    found = []
    lines = report.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and set(lines[i + 1]) <= set("|-: ")):
            continue
        head = [c.strip() for c in line.strip("|").split("|")]
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            for column, cell in zip(head, row.strip("|").split("|"), strict=False):
                if column.startswith(EXEMPT_COLUMNS) or "exact" in cell or "(grid" in cell:
                    continue
                for m in _DECIMAL.finditer(cell):
                    after, before = cell[m.end() : m.end() + 2], cell[max(0, m.start() - 2) : m.start()]
                    if after != " ±" and before != "± ":
                        found.append((column, cell.strip()))
    return found
