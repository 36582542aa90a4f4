"""Errors a user can cause and fix.

:class:`UsageError` is a :class:`ValueError`: Python callers catch it as one, and the command
line turns it into a one-line message and exit status 2 instead of a traceback.
"""

import operator

__all__ = ["AllRestartsDiverged", "UsageError", "check_choice", "check_positive_float", "check_positive_int"]


class UsageError(ValueError):
    """Bad input: the message names the offending value and what is allowed."""


class AllRestartsDiverged(RuntimeError):
    """Every restart of a fit produced a non-finite loss; the message lists where."""


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, or :class:`UsageError` if it is not an integer >= ``minimum``."""
    try:
        out = operator.index(value)
    except TypeError:
        out = None
    if out is None or isinstance(value, bool):
        raise UsageError(f"{name}={value!r} is not an integer; expected an integer >= {minimum}")
    if out < minimum:
        raise UsageError(f"{name}={out} is not allowed; expected an integer >= {minimum}")
    return out


def check_positive_float(name: str, value) -> float:
    """``value`` as a float, or :class:`UsageError` unless it is finite and > 0."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r} is not a number; expected a positive number") from None
    if not (out > 0 and out < float("inf")):
        raise UsageError(f"{name}={value!r} is not allowed; expected a finite number > 0")
    return out


def check_choice(name: str, value, allowed) -> str:
    """``value`` if it is one of ``allowed``, else :class:`UsageError` listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, allowed))}")
    return value
