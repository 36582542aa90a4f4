"""The run folder's written schema: typed, versioned records, and the folder that holds them.

Each stage writes records (:mod:`pyrofail.records.job`, ``posterior``, ``verdict``,
``findings``, ``downstream``, ``regression``) and reads the earlier stages' records through
:class:`RunFolder`; no stage imports another, and the report renders records only.
``docs/run-folder.md`` lists every file, its record, who writes it and who reads it.
"""

from pyrofail.records.folder import RunFolder, job_id, process_id, truth_of
from pyrofail.records.job import Build, FailedJob, FitMetrics, JobRecord, M2Metrics, Restart, TestPoints
from pyrofail.records.schema import KINDS, Record, StaleRecord

__all__ = [
    "KINDS",
    "Build",
    "FailedJob",
    "FitMetrics",
    "JobRecord",
    "M2Metrics",
    "Record",
    "Restart",
    "RunFolder",
    "StaleRecord",
    "TestPoints",
    "job_id",
    "process_id",
    "truth_of",
]
