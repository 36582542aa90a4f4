"""Measure learned guides and generative models against the truth (``pyrofail.analysis``).

The entry points: :func:`reference_posterior` (the exact or NUTS posterior of any model),
:func:`compare` (a guide and its model against it, and against the ground truth) and
:func:`diagnose` (which failure condition of Yacoby et al. 2020 is at work); for downstream
tasks, :func:`mig` and :func:`dci` (disentanglement) and :func:`attack_encoder` (adversarial
robustness).
"""

from pyrofail.analysis import bounds
from pyrofail.analysis.attacks import attack_encoder
from pyrofail.analysis.compare import compare
from pyrofail.analysis.diagnose import diagnose
from pyrofail.analysis.disentanglement import dci, mig
from pyrofail.analysis.reference import reference_posterior

__all__ = ["attack_encoder", "bounds", "compare", "dci", "diagnose", "mig", "reference_posterior"]
