"""The :class:`Option` record of :mod:`pyrofail.options` and the checks its entries use (each
``check(value, flag)`` raises a one-line :class:`~pyrofail.errors.UsageError` in the flag's
spelling).

Example:
    >>> Option("steps", 3000, "training steps", flags=("--steps",)).flag
    '--steps'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyrofail.errors import UsageError, check_positive_float, check_positive_int

__all__ = ["Option", "each", "fraction", "no_repeats", "positive_float", "positive_int"]


def positive_int(value, flag):
    check_positive_int(flag, value)


def positive_float(value, flag):
    check_positive_float(flag, value)


def each(check):
    def run(values, flag):
        for v in values:
            check(v, flag)

    return run


def no_repeats(values, flag):
    if values is not None and len(set(map(str, values))) != len(values):
        raise UsageError(f"{flag} lists a value twice: {', '.join(map(str, values))}")


def fraction(value, flag):
    if not 0.0 < float(value) <= 1.0:
        raise UsageError(f"{flag} {value} is not allowed; expected a share in (0, 1]")


@dataclass(frozen=True)
class Option:
    """One option (module docstring). ``flags``: its command-line spellings (none: presets and
    Python only); ``parse``: the argparse type of one value (lists are comma-separated when
    ``kind == "sweep"`` or ``many``); ``check(value, flag)`` raises a one-line
    :class:`~pyrofail.errors.UsageError` in the flag's spelling."""

    name: str
    default: Any
    help: str
    kind: str = "fit"
    flags: tuple[str, ...] = ()
    parse: Callable | None = None
    metavar: str | None = None
    choices: tuple | None = None
    check: Callable | None = None
    many: bool = False
    switch: bool = False  # a flag without a value (store_true)
    to_fit: bool = False

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else self.name
