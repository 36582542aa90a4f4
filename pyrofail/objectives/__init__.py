"""Training objectives, registered by name (``pyrofail.zoo.names("objective")``).

Each objective is a Pyro ``ELBO`` subclass, so ``SVI(model, guide, optim, objective)`` trains
with it, and also knows its own per-point value (``per_point``), which :func:`pyrofail.fit`
uses to select restarts on validation data and the analysis reports on test data. Importing
this package registers them.
"""

from pyrofail.objectives.elbo import ELBO, elbo
from pyrofail.objectives.iwae import IWAE, iwae
from pyrofail.objectives.m2 import M2ELBO, M2IWAE
from pyrofail.objectives.self_consistent import SelfConsistentELBO, self_consistent
from pyrofail.objectives.spread import SpreadELBO, spread

__all__ = [
    "ELBO",
    "IWAE",
    "M2ELBO",
    "M2IWAE",
    "SelfConsistentELBO",
    "SpreadELBO",
    "elbo",
    "iwae",
    "self_consistent",
    "spread",
]
