"""``data.json``: what a run on a user's data used of it, as a record (:class:`DataRecord`).

Written once by :mod:`pyrofail.analyze` when a ``--data`` run starts, read by the report's Data
section: the source and its options, the features, the split sizes and the rows of every split
(of every fold with cross-fitting), and the standardisation fitted on the training rows.

Example:
    >>> rows = Rows(train=[0, 1], val=[2], test=[3])
    >>> d = DataRecord("diabetes", {}, ["age"], 1, Sizes(2, 1, 1), [rows])
    >>> DataRecord.from_json(d.to_json()) == d
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyrofail.records.schema import Record

__all__ = ["DataRecord", "Rows", "Sizes"]


@dataclass
class Sizes(Record):
    """Rows in each split (of the first fold, with cross-fitting)."""

    train: int
    val: int
    test: int


@dataclass
class Rows(Record):
    """The row indices of the source in each split of one fold."""

    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)


@dataclass
class DataRecord(Record):
    """``data.json``: ``source`` (a bundled set's name or a file), the data ``options`` of the
    run, the ``features``, the number of cross-fitting ``folds`` (1: one seeded split), the
    split ``sizes``, the ``rows`` of every fold and the ``standardizer``
    (:meth:`pyrofail.data.Standardizer.to_dict`; ``None`` with ``--no-standardize``)."""

    KIND = "data"
    VERSION = 1

    source: str
    options: dict[str, Any]
    features: list[str]
    folds: int
    sizes: Sizes
    rows: list[Rows]
    standardizer: dict[str, Any] | None = None
