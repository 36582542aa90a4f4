"""The figures of a run (``pyrofail.analysis.figures``); matplotlib loads on the first figure,
with the Agg backend.

* :mod:`~pyrofail.analysis.figures.plots`: a job's samples and decoder, the failure map, the
  semi-supervised class curves, and the shared helpers;
* :mod:`~pyrofail.analysis.figures.posterior`: posteriors at chosen points and the PMO gap over
  data space;
* :mod:`~pyrofail.analysis.figures.bnn`: the Bayesian neural networks' predictive figures.
"""
