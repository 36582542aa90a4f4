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

# the modules register their procedures; zoo.procedure(name) returns the function
from pyrofail.procedures import joint, libi, posthoc

__all__ = ["joint", "libi", "posthoc"]
