r"""Bootstrap standard errors that say how well they are known.

The bootstrap standard error of a score is the standard deviation :math:`s` of the score over
:math:`B` resamples of the points. It is itself an estimate: for a bootstrap distribution of
kurtosis :math:`\kappa` (3 for a normal one) the delta method gives

.. math::

    \frac{\operatorname{sd}(s)}{\sigma} \approx \sqrt{\frac{\kappa - 1}{4B}},

so that the 95% half-width of :math:`s` relative to :math:`\sigma` is
:math:`h = 1.96 \sqrt{(\kappa - 1)/4B}`. For :math:`h \le 10\%` at :math:`\kappa = 3`,
:math:`B \ge 1.96^2 \cdot 2 / (4 \cdot 0.01) = 192`; :data:`BOOTSTRAP_DRAWS` = 250 keeps
:math:`h \le 10\%` up to :math:`\kappa = 3.6` (its kurtosis estimate from 250 normal draws
exceeds 3.6 about 2.5% of the time). :func:`bootstrap_estimate` measures :math:`\kappa` on the
draws and flags the :class:`~pyrofail.estimate.Estimate` when :math:`h` exceeds 10%.

Example:
    >>> draws = np.random.default_rng(0).normal(0.5, 0.01, BOOTSTRAP_DRAWS)
    >>> est = bootstrap_estimate(0.5, draws, 1000)
    >>> round(est.stderr, 3), est.flag is None
    (0.01, True)
    >>> print(bootstrap_estimate(0.5, draws[:5], 1000).flag)
    bootstrap standard error known to ±62% (5 draws; 250 give ±9%)
"""

from __future__ import annotations

import math

import numpy as np

from pyrofail.estimate import Estimate

__all__ = ["BOOTSTRAP_DRAWS", "SE_PRECISION", "bootstrap_estimate", "se_precision"]

Z95 = 1.959963984540054
SE_PRECISION = 0.10  # the 95% half-width a bootstrap standard error must reach, relative
BOOTSTRAP_DRAWS = 250  # module docstring: h <= 10% for kurtosis up to 3.6


def se_precision(draws) -> float:
    r"""The 95% half-width :math:`h` of the bootstrap standard error relative to its value,
    :math:`1.96 \sqrt{(\hat\kappa - 1) / 4B}`, with :math:`\hat\kappa` the kurtosis of the draws
    (at least 3, the normal value, so that a few draws never look precise); ``inf`` for
    fewer than 2 draws."""
    d = np.asarray(draws, dtype=np.float64)
    b = d.size
    if b < 2:
        return math.inf
    c = d - d.mean()
    m2 = float(np.mean(c * c))
    kurt = float(np.mean(c**4)) / (m2 * m2) if m2 > 0 else 3.0
    return Z95 * math.sqrt((max(kurt, 3.0) - 1.0) / (4.0 * b))


def bootstrap_estimate(point: float, draws, n: int) -> Estimate:
    """``point`` with the bootstrap standard error of ``draws`` (``None`` for fewer than 2),
    over ``n`` points, flagged when that error is known to worse than ±10% (:func:`se_precision`)."""
    d = np.asarray(draws, dtype=np.float64)
    if d.size < 2:
        flag = None if d.size == 0 else "one bootstrap draw: no standard error"
        return Estimate(float(point), None, int(n), flag=flag)
    h = se_precision(d)
    flag = None
    if h > SE_PRECISION:
        flag = (
            f"bootstrap standard error known to ±{h:.0%} ({d.size} draws; {BOOTSTRAP_DRAWS} give "
            f"±{Z95 * math.sqrt(2 / (4 * BOOTSTRAP_DRAWS)):.0%})"
        )
    return Estimate(float(point), float(np.std(d, ddof=1)), int(n), flag=flag)
