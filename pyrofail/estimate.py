r"""One shape for every number a user reads: a mean, its standard error, and how it was obtained.

An :class:`Estimate` is a mean over ``n`` points (or draws) with its standard error, or an exact
value (quadrature: ``exact=True``, no sampling error beyond the rule's, which is far below the
digits shown), and an optional ``flag``: a diagnostic the number failed (a PSIS :math:`\hat k`
above 0.7, a missed standard-error target), printed beside it, never hidden.

Two fits scored on the same points are compared by :meth:`Estimate.paired`: the mean of the
per-point differences :math:`d_n = a_n - b_n` with the paired standard error
:math:`\operatorname{sd}(d)/\sqrt N`; a difference within :data:`TIE_SE` standard errors of zero
(plus a margin) is a tie (:meth:`Estimate.verdict`).

Example:
    >>> import torch
    >>> a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    >>> print(Estimate.of(a))
    2.500 ± 0.645
    >>> d = Estimate.paired(a + 0.5, a)
    >>> d.mean, d.stderr, d.verdict()
    (0.5, 0.0, 'greater')
    >>> Estimate.paired(a, a.flip(0)).verdict()
    'tie'
    >>> Estimate.from_dict(d.to_dict()) == d
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

__all__ = ["TIE_SE", "Estimate"]

TIE_SE = 2.0  # a difference within this many standard errors of zero is a tie


@dataclass(frozen=True)
class Estimate:
    """``mean`` ± ``stderr`` over ``n`` points; ``exact`` for a quadrature value; ``flag`` names a
    failed diagnostic (``None`` when every check passed)."""

    mean: float
    stderr: float | None = None
    n: int | None = None
    exact: bool = False
    flag: str | None = None

    @classmethod
    def of(cls, values, mc_stderr: float = 0.0, exact: bool = False, flag: str | None = None) -> Estimate:
        r"""The mean of per-point ``values`` and its sampling standard error
        :math:`\operatorname{sd}/\sqrt n` over the points (``mc_stderr``, a Monte Carlo error of
        the mean, added in quadrature; ``None`` at ``n = 1``, where no spread can be seen)."""
        v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        n = v.numel()
        if n == 0:
            return cls(math.nan, None, 0, exact, flag)
        se = math.hypot(float(v.std() / math.sqrt(n)), mc_stderr) if n > 1 else None
        return cls(float(v.mean()), se, n, exact, flag)

    @classmethod
    def paired(cls, a, b, mc_stderr: float = 0.0) -> Estimate:
        """The mean of ``a - b`` over the same points, with the paired standard error."""
        a = torch.as_tensor(a, dtype=torch.float64)
        b = torch.as_tensor(b, dtype=torch.float64)
        return cls.of(a - b, mc_stderr)

    def verdict(self, margin: float = 0.0) -> str:
        """``"greater"`` if the mean exceeds ``margin`` by more than :data:`TIE_SE` standard
        errors, ``"less"`` if it is below ``-margin`` by as much, else ``"tie"`` (also when the
        error is unknown)."""
        if self.stderr is None or not math.isfinite(self.mean):
            return "tie"
        bound = margin + TIE_SE * self.stderr
        if self.mean > bound:
            return "greater"
        if self.mean < -bound:
            return "less"
        return "tie"

    def flagged(self, flag: str | None) -> Estimate:
        """The same estimate with ``flag`` added to any it had (``None`` adds nothing)."""
        if not flag:
            return self
        return replace(self, flag=flag if not self.flag else f"{self.flag}; {flag}")

    def to_dict(self) -> dict:
        """A JSON record; fields at their default are left out."""
        out = asdict(self)
        return {k: v for k, v in out.items() if k == "mean" or not (v is None or v is False)}

    @classmethod
    def from_dict(cls, record: dict | None) -> Estimate | None:
        return None if record is None else cls(**record)

    def __str__(self) -> str:
        from pyrofail.numbers import estimate_text

        return estimate_text(self)
