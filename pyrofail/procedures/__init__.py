"""Training procedures: how objectives are applied to fit a model and its guide, by name.

A procedure is a function ``(config, problem) -> FitResult`` registered with
``@register("procedure", NAME, ...)``; :func:`pyrofail.fit` resolves the options into a
:class:`~pyrofail.training.config.FitConfig` and a :class:`~pyrofail.training.config.Problem`
and calls the one it is asked for (``procedure="joint"`` by default). Importing this package
registers them.

Example:
    >>> from pyrofail import zoo
    >>> "joint" in zoo.names("procedure")
    True
"""

from pyrofail.procedures.joint import joint
from pyrofail.procedures.libi import libi
from pyrofail.procedures.posthoc import posthoc_self_consistency

__all__ = ["joint", "libi", "posthoc_self_consistency"]
