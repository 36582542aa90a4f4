"""Measure learned guides and generative models against the truth (``pyrofail.analysis``).

The entry points: :func:`reference_posterior` (the exact or NUTS posterior of any model),
:func:`compare` (a guide and its model against it, and against the ground truth) and
:func:`diagnose` (which failure condition of Yacoby et al. 2020 is at work). Heavy libraries
(ArviZ, matplotlib) load only when a function needs them.
"""

import importlib
import importlib.util

from pyrofail.analysis.compare import compare
from pyrofail.analysis.diagnose import diagnose
from pyrofail.analysis.reference import reference_posterior

__all__ = ["compare", "diagnose", "reference_posterior"]


def __getattr__(name: str):
    """Submodules (``pf.analysis.metrics``, ...) load on first access."""
    if name == "bounds":  # moved to the core, where the objectives use it
        return importlib.import_module("pyrofail.bounds")
    if importlib.util.find_spec(f"pyrofail.analysis.{name}") is not None:
        return importlib.import_module(f"pyrofail.analysis.{name}")
    raise AttributeError(f"module 'pyrofail.analysis' has no attribute {name!r}")
