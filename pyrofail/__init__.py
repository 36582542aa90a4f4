"""pyrofail: a Pyro model zoo that reproduces, measures and explains how VAEs fail.

Four swappable axes — the generative process (``pyrofail.models``), the variational family
(``pyrofail.guides``), the objective (``pyrofail.objectives``) and the training procedure — are
registered by name in :mod:`pyrofail.zoo`, trained by :func:`fit`, and measured against the
true posterior by ``pyrofail.analysis``. The subpackages load on first use, so
``import pyrofail as pf`` stays cheap and ``pf.analysis.reference_posterior`` works at once.

Example:
    >>> import pyrofail as pf
    >>> "figure8" in pf.zoo.names("model")
    True
    >>> pf.models.Figure8().latent_dim
    1
    >>> pf.check.__module__  # the check of a user's own fitted Pyro model and guide
    'pyrofail.program_check'
"""

import importlib
from pathlib import Path

from pyrofail import _source_tree

# from a checkout, models/, guides/ and analysis/ stand beside pyrofail/ (see _source_tree)
_source_tree.install(Path(__file__).parent)

from pyrofail import zoo  # noqa: E402
from pyrofail.errors import UsageError  # noqa: E402
from pyrofail.fit import FitResult, fit  # noqa: E402

__version__ = "0.1.0"

# loaded on first attribute access (PEP 562), as ``pyro.infer`` after ``import pyro``
_LAZY = (
    "analysis",
    "bnn",
    "data",
    "guides",
    "models",
    "objectives",
    "options",
    "programs",
    "records",
    "report",
)
# functions loaded on first use: name -> the module that defines it
_LAZY_FUNCTIONS = {"check": "pyrofail.program_check"}

__all__ = ["FitResult", "UsageError", "__version__", "fit", "zoo", *_LAZY, *_LAZY_FUNCTIONS]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"pyrofail.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'pyrofail' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_FUNCTIONS))
