r"""Per-column standardisation with parameters taken from the training rows only.

.. math::

    \tilde x_{nd} = \frac{x_{nd} - m_d}{s_d}, \qquad
    m_d = \frac1{N_\text{train}} \sum_{n \in \text{train}} x_{nd}, \qquad
    s_d = \Big(\frac1{N_\text{train}} \sum_{n \in \text{train}} (x_{nd} - m_d)^2\Big)^{1/2},

the population standard deviation (``ddof=0``), as scikit-learn's ``StandardScaler``. Taking
:math:`m, s` from the training rows alone keeps the validation and test points unseen; the run
folder records them (:meth:`Standardizer.to_dict`) so that results map back to the data's units.
A column that is constant on the training rows has :math:`s_d = 0` and cannot be standardised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyrofail.errors import UsageError

__all__ = ["Standardizer"]

# s_d below this fraction of |m_d| is rounding error of a constant column, not spread
RELATIVE_ZERO = 1e-12


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Column means ``mean`` and standard deviations ``scale`` (float64, ``(D,)``) and the
    column names they belong to."""

    mean: torch.Tensor
    scale: torch.Tensor
    features: tuple[str, ...] | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, features=None) -> Standardizer:
        """Mean and population sd of every column of ``x`` (``(N, D)``, the training rows).

        Raises :class:`~pyrofail.errors.UsageError` naming the columns that are constant.

        Example:
            >>> s = Standardizer.fit(torch.tensor([[1.0, 10.0], [3.0, 30.0]]), ("a", "b"))
            >>> s.mean.tolist(), s.scale.tolist()
            ([2.0, 20.0], [1.0, 10.0])
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() != 2 or x.shape[0] < 2:
            raise UsageError(f"standardising needs at least 2 rows of shape (N, D); got {tuple(x.shape)}")
        mean = x.mean(0)
        scale = x.std(0, correction=0)
        constant = (scale <= RELATIVE_ZERO * mean.abs()).nonzero().flatten().tolist()
        if constant:
            names = [features[j] if features is not None else f"x{j}" for j in constant]
            shown = ", ".join(repr(n) for n in names[:8]) + (
                f", ... ({len(names)} in all)" if len(names) > 8 else ""
            )
            which, it = (f"column {shown} is", "it") if len(names) == 1 else (f"columns {shown} are", "them")
            raise UsageError(
                f"{which} constant on the training rows, so standardisation would divide by 0; "
                f"drop {it} with columns= or turn standardisation off (standardize=False)"
            )
        return cls(mean, scale, None if features is None else tuple(str(f) for f in features))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(x - m) / s`, in ``x``'s dtype.

        Example:
            >>> s = Standardizer(torch.tensor([2.0]).double(), torch.tensor([4.0]).double())
            >>> s.transform(torch.tensor([[10.0]])).tolist()
            [[2.0]]
        """
        return ((x.double() - self.mean.to(x.device)) / self.scale.to(x.device)).to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`x s + m`: standardised values back in the data's units.

        Example:
            >>> s = Standardizer(torch.tensor([2.0]).double(), torch.tensor([4.0]).double())
            >>> s.inverse(torch.tensor([[2.0]])).tolist()
            [[10.0]]
        """
        return (x.double() * self.scale.to(x.device) + self.mean.to(x.device)).to(x.dtype)

    def to_dict(self) -> dict:
        """JSON-ready record: ``{"method", "features", "mean", "scale"}``.

        Example:
            >>> Standardizer.fit(torch.tensor([[0.0], [2.0]]), ["a"]).to_dict()["scale"]
            [1.0]
        """
        return {
            "method": "(x - mean) / scale, mean and population sd (ddof=0) of the training rows",
            "features": None if self.features is None else list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, record: dict) -> Standardizer:
        """The inverse of :meth:`to_dict`.

        Example:
            >>> s = Standardizer.fit(torch.tensor([[0.0], [2.0]]))
            >>> Standardizer.from_dict(s.to_dict()).mean.tolist()
            [1.0]
        """
        features = record.get("features")
        return cls(
            torch.tensor(record["mean"], dtype=torch.float64),
            torch.tensor(record["scale"], dtype=torch.float64),
            None if features is None else tuple(features),
        )
