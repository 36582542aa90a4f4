"""How numbers are written for a reader: one formatter for the report and every sentence.

Example:
    >>> from pyrofail.numbers import number, percent, with_error
    >>> number(0.12345), with_error(1.5, 0.0123), percent(0.274), number(None), number("inf")
    ('0.123', '1.500 ± 0.012', '27%', '—', '∞')
"""

from __future__ import annotations

__all__ = ["estimate_text", "number", "percent", "with_error"]


def number(value, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals; "—" for a missing value or NaN, "∞"/"−∞" for
    infinities (JSON stores them as the strings "inf"/"-inf")."""
    if value is None:
        return "—"
    v = float(value)
    if v != v:
        return "—"
    if v in (float("inf"), float("-inf")):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}f}"


def with_error(value, err=None, digits: int = 3) -> str:
    """``value ± err`` (the error left out when it is missing or zero)."""
    text = number(value, digits)
    if value is not None and err is not None and float(err) > 0:
        text += f" ± {float(err):.{digits}f}"
    return text


def percent(value: float) -> str:
    return f"{100 * float(value):.0f}%"


def estimate_text(estimate, digits: int = 3) -> str:
    """An :class:`~pyrofail.estimate.Estimate` as a reader sees it: ``mean ± se`` (for a mean of
    exact per-point values, the ± is the sampling error over the points), "(exact)" for an
    exact value without one, and its flag in brackets."""
    if estimate is None:
        return "—"
    if estimate.stderr is None and estimate.exact:
        text = f"{number(estimate.mean, digits)} (exact)"
    elif estimate.stderr is None:
        text = f"{number(estimate.mean, digits)} ± ?"
    else:
        text = f"{number(estimate.mean, digits)} ± {float(estimate.stderr):.{digits}f}"
    return f"{text} [{estimate.flag}]" if estimate.flag else text
