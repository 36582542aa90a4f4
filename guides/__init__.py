"""Variational families (imported as ``pyrofail.guides``).

A guide is an amortized :class:`AmortizedGuide` whose only family-specific part is
``distribution(x)``. Importing this package registers the families.
"""

from pyrofail.guides.base import AmortizedGuide
from pyrofail.guides.bernoulli_latent import BernoulliLatentGuide
from pyrofail.guides.flow import FlowGuide
from pyrofail.guides.full_rank import FullRankGuide
from pyrofail.guides.m2 import M2Guide
from pyrofail.guides.mean_field import MeanFieldGuide
from pyrofail.guides.mixture import MixtureGuide, MixtureOfDiagNormals

__all__ = [
    "AmortizedGuide",
    "BernoulliLatentGuide",
    "FlowGuide",
    "FullRankGuide",
    "M2Guide",
    "MeanFieldGuide",
    "MixtureGuide",
    "MixtureOfDiagNormals",
]
