"""Measure learned guides and generative models against the truth (``pyrofail.analysis``).

The entry points: :func:`reference_posterior` (the exact or NUTS posterior of any model),
:func:`compare` (a guide and its model against it, and against the ground truth) and
:func:`diagnose` (which failure condition of Yacoby et al. 2020 is at work); for downstream
tasks, :func:`mig` and :func:`dci` (disentanglement) and :func:`attack_encoder` (adversarial
robustness). Heavy libraries (ArviZ, matplotlib, scikit-learn) load only when a function needs
them, and so do the submodules (``pf.analysis.metrics``, ...).

The folder by concern:

* ``reference/``: the reference-posterior engine (exact grid, NUTS with mode finding and
  re-weighting, quality gate, storage as ArviZ ``InferenceData``);
* the measures, one module each: ``metrics`` (Table 1's quantities), ``compare`` (a guide and
  its model against a reference), ``hardness`` (KL*, the best mean-field Gaussian),
  ``diagnose`` (the failure conditions), ``uncertainty`` (paired differences, ties),
  ``semisupervised`` (the M2 model's measures);
* ``downstream/``: what a failure costs (attacks, disentanglement, outliers, self-consistency);
* ``figures/``: every figure of a run.
"""

import importlib
import importlib.util

from pyrofail.analysis.compare import compare
from pyrofail.analysis.diagnose import diagnose
from pyrofail.analysis.reference import reference_posterior

# functions whose module loads on first use: name -> module
_LAZY = {
    "attack_encoder": "pyrofail.analysis.downstream.attacks",
    "dci": "pyrofail.analysis.downstream.disentanglement",
    "mig": "pyrofail.analysis.downstream.disentanglement",
}

__all__ = ["attack_encoder", "compare", "dci", "diagnose", "mig", "reference_posterior"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "bounds":  # moved to the core, where the objectives use it
        return importlib.import_module("pyrofail.bounds")
    if importlib.util.find_spec(f"pyrofail.analysis.{name}") is not None:
        return importlib.import_module(f"pyrofail.analysis.{name}")
    raise AttributeError(f"module 'pyrofail.analysis' has no attribute {name!r}")
