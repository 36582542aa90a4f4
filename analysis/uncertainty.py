r"""Differences with paired standard errors, and when a difference is a tie.

Two fits measured on the same test points give per-point values :math:`a_n` and :math:`b_n`;
their difference of means is estimated by the mean of :math:`d_n = a_n - b_n` with the paired
standard error :math:`\operatorname{sd}(d) / \sqrt N` (the spread over points that the two
share cancels). A difference inside two standard errors is a *tie*: the run cannot order the
two. Monte Carlo errors of the per-point values, where given, add in quadrature.

Example:
    >>> import torch
    >>> a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    >>> d = paired_difference(a + 0.5, a)
    >>> d["mean"], d["stderr"], verdict(d)
    (0.5, 0.0, 'greater')
    >>> verdict(paired_difference(a, a.flip(0)))
    'tie'
"""

from __future__ import annotations

import math

import torch

__all__ = ["TIE_SE", "paired_difference", "verdict"]

TIE_SE = 2.0  # a difference within this many standard errors of zero is a tie


def paired_difference(a, b, mc_stderr: float = 0.0) -> dict:
    """Mean of ``a - b`` over points and its paired standard error (plus ``mc_stderr``, the
    Monte Carlo error of the mean difference, in quadrature)."""
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    n = d.numel()
    se = float(d.std() / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(d.mean()), "stderr": math.hypot(se, mc_stderr), "n": n}


def verdict(diff: dict, margin: float = 0.0) -> str:
    """``"greater"`` if the difference exceeds ``margin`` by more than :data:`TIE_SE`
    standard errors, ``"less"`` if it is below ``-margin`` by as much, else ``"tie"``."""
    bound = margin + TIE_SE * diff["stderr"]
    if diff["mean"] > bound:
        return "greater"
    if diff["mean"] < -bound:
        return "less"
    return "tie"
