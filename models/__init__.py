"""Generative processes with known ground truth (imported as ``pyrofail.models``).

Every process meets the model contract of :class:`LatentGaussian`: a Pyro ``model`` with sites
``"z"`` and ``"x"`` in the ``data`` plate, ``log_joint(z, x)`` and ``sample(n, seed)``.
Importing this package registers the zoo entries.
"""

from pyrofail.models.clusters import Clusters
from pyrofail.models.figure8 import Figure8
from pyrofail.models.latent_gaussian import Dataset, LatentGaussian
from pyrofail.models.linear_gaussian import LinearGaussian
from pyrofail.models.quadratic import Quadratic
from pyrofail.models.regression import Bimodal, Diabetes, Heteroscedastic  # noqa: F401 (kind "regression")

__all__ = ["Clusters", "Dataset", "Figure8", "LatentGaussian", "LinearGaussian", "Quadratic"]
