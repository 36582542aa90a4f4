"""pyrofail: a Pyro model zoo that reproduces, measures and explains how VAEs fail.

Three swappable axes — the generative process (``pyrofail.models``), the variational family
(``pyrofail.guides``) and the objective (``pyrofail.objectives``) — are trained by one SVI
loop (:func:`fit`) and measured against the true posterior by ``pyrofail.analysis``.
"""

from pyrofail import zoo
from pyrofail.errors import UsageError
from pyrofail.fit import FitResult, fit

__version__ = "0.1.0"

__all__ = ["FitResult", "UsageError", "__version__", "fit", "zoo"]
