"""The stages of a run, in order: each a module with one entry point ``run(folder)`` that reads
the run folder's records (:class:`~pyrofail.records.RunFolder`) and writes its own.

==============  ==============================================  =====================================
stage           reads                                           writes
==============  ==============================================  =====================================
``program``     ``config.json`` (``--program``)                 ``program.json``
``jobs``        ``config.json``                                 ``jobs/<job>/`` (fit, metrics, figures)
``references``  finished jobs                                   ``truth/<p>/reference.nc``,
                                                                ``jobs/<job>/reference.nc``
``bias``        fits, references                                ``truth/<p>/hardness.json``,
                                                                ``jobs/<job>/posterior.json``,
                                                                ``figures/``
``diagnosis``   hardness, posterior and test-point records      ``verdicts.json``, ``figures/``
``findings``    job and test-point records                      ``findings.json``
``downstream``  fits (``--downstream``)                         ``downstream.json``, ``figures/``
``regression``  ``config.json`` (``--preset bnn``)              ``regression/<process>.json``,
                                                                ``figures/bnn-<process>.png``
``report``      every record                                    ``metrics.json``, ``report.md``
==============  ==============================================  =====================================

No stage imports another; every stage skips what is already done for the same settings, so
resuming a run reruns only what is missing. Adding a stage is one module here, one entry in
:data:`STAGES`, its records in :mod:`pyrofail.records` and its renderer in
:mod:`pyrofail.report`.
"""

from __future__ import annotations

from pyrofail.records import RunFolder
from pyrofail.stages import (
    bias,
    diagnosis,
    downstream,
    findings,
    jobs,
    program,
    references,
    regression,
    report,
)

__all__ = ["STAGES", "RunFolder", "run_all"]

STAGES = (program, jobs, references, bias, diagnosis, findings, downstream, regression, report)


def run_all(folder: RunFolder, stages=STAGES) -> None:
    """Run ``stages`` (modules with ``run(folder)``), in order, on ``folder``."""
    for stage in stages:
        stage.run(folder)
