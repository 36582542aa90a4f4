"""The stages of a run, in order: each a module with one entry point ``run(folder)`` that reads
the run folder (:class:`~pyrofail.stages.folder.RunFolder`) and writes its own files.

==============  ==============================================  =====================================
stage           reads                                           writes
==============  ==============================================  =====================================
``jobs``        ``config.json``                                 ``jobs/<job>/`` (fit, metrics, figures)
``references``  finished jobs' models                           ``truth/<m>/reference.nc``,
                                                                ``jobs/<job>/reference.nc``
``bias``        models, guides, references                      ``truth/<m>/hardness.json``,
                                                                ``jobs/<job>/posterior.json``,
                                                                ``figures/``
``diagnosis``   ``hardness.json``, ``posterior.json``           ``diagnosis.json``
``downstream``  models and guides (``--downstream``)            ``downstream.json``, ``figures/``
``regression``  ``config.json`` (``--preset bnn``)              ``regression/<process>.json``,
                                                                ``figures/bnn-<process>.png``
``report``      everything above                                ``metrics.json``, ``report.md``
==============  ==============================================  =====================================

Every stage skips what is already done for the same settings, so resuming a run reruns only
what is missing. Adding a stage is one module here, one entry in :data:`STAGES`, and one
section in :mod:`pyrofail.stages.report`.
"""

from __future__ import annotations

from pyrofail.stages import bias, diagnosis, downstream, jobs, references, regression, report
from pyrofail.stages.folder import RunFolder

__all__ = ["STAGES", "RunFolder", "run_all"]

STAGES = (jobs, references, bias, diagnosis, downstream, regression, report)


def run_all(folder: RunFolder, stages=STAGES) -> None:
    """Run ``stages`` (modules with ``run(folder)``), in order, on ``folder``."""
    for stage in stages:
        stage.run(folder)
