"""Measure learned guides and generative models against the truth (``pyrofail.analysis``)."""

from pyrofail.analysis import bounds

__all__ = ["bounds"]
