"""Generative processes with known ground truth (imported as ``pyrofail.models``).

Every process meets the model contract of :class:`LatentGaussian`: a Pyro ``model`` with sites
``"z"`` and ``"x"`` in the ``data`` plate, ``log_joint(z, x)`` and ``sample(n, seed)``.
Importing this package registers the zoo entries.
"""

from pyrofail.models.clusters import Clusters
from pyrofail.models.degenerate_line import DegenerateLine, DegenerateLineContinuous
from pyrofail.models.figure8 import Figure8
from pyrofail.models.heteroscedastic_decoder import HeteroscedasticDecoder
from pyrofail.models.latent_bernoulli import LatentBernoulli
from pyrofail.models.latent_gaussian import Dataset, LatentGaussian
from pyrofail.models.linear_gaussian import LinearGaussian
from pyrofail.models.m2 import LabelledLatentGaussian, m2_model
from pyrofail.models.quadratic import Quadratic
from pyrofail.models.regression import Bimodal, Diabetes, Heteroscedastic
from pyrofail.models.semicircle import Semicircle
from pyrofail.models.two_factor import TwoFactorSmooth, TwoFactorSteps

__all__ = [
    "Bimodal",
    "Clusters",
    "Dataset",
    "DegenerateLine",
    "DegenerateLineContinuous",
    "Diabetes",
    "Figure8",
    "Heteroscedastic",
    "HeteroscedasticDecoder",
    "LabelledLatentGaussian",
    "LatentBernoulli",
    "LatentGaussian",
    "LinearGaussian",
    "Quadratic",
    "Semicircle",
    "TwoFactorSmooth",
    "TwoFactorSteps",
    "m2_model",
]
