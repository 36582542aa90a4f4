"""Typed, versioned records: what the stages of a run write and read.

A record is a dataclass deriving from :class:`Record`; its fields' type hints are the schema.
:meth:`Record.to_json` writes ``{"kind", "version", ...fields}`` and :meth:`Record.from_json`
reads it back, checking the kind and the version: a file written under another version raises
:class:`StaleRecord`, which a stage treats as "not done" and recomputes. Field types: ``int``,
``float``, ``str``, ``bool``, :class:`~pyrofail.estimate.Estimate`, another record class,
``list[...]``, ``dict[str, ...]``, ``X | None`` and ``Any`` (plain JSON). Tensors are accepted
where a list of numbers is declared. Non-finite floats are written as ``null``/``"inf"`` and
read back as floats.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Toy(Record):
    ...     KIND = "toy"
    ...     VERSION = 1
    ...     value: Estimate
    ...     per_point: list[float]
    >>> t = Toy(Estimate(1.0, 0.1, 4), [1.0, float("inf")])
    >>> Toy.from_json(t.to_json()) == t
    True
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

import torch

from pyrofail.estimate import Estimate

__all__ = ["KINDS", "Record", "StaleRecord", "decode", "encode"]

KINDS: dict[str, type] = {}  # kind -> record class: the written schema


class StaleRecord(Exception):
    """A record file of another kind or version than the code reads: recompute it."""


class Record:
    """Base of every record; subclasses are dataclasses with ``KIND`` and ``VERSION``."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("KIND"):
            KINDS[cls.KIND] = cls

    def to_json(self) -> dict:
        return {"kind": self.KIND, "version": self.VERSION, **encode(self, type(self))}

    @classmethod
    def from_json(cls, data: dict):
        if not isinstance(data, dict) or data.get("kind") != cls.KIND or data.get("version") != cls.VERSION:
            found = (data or {}).get("kind"), (data or {}).get("version")
            raise StaleRecord(f"expected {cls.KIND} v{cls.VERSION}, found {found[0]} v{found[1]}")
        return decode({k: v for k, v in data.items() if k not in ("kind", "version")}, cls)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _args(hint) -> tuple:
    return typing.get_args(hint)


def _is_optional(hint) -> bool:
    return type(None) in _args(hint) and typing.get_origin(hint) in (typing.Union, types.UnionType)


def _float_out(value):
    value = float(value)
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _float_in(value):
    if value is None:
        return math.nan
    return float(value)  # float("inf") reads "inf"


def encode(value, hint=Any):
    """``value`` as plain JSON according to ``hint``."""
    if value is None:
        return None
    if _is_optional(hint):
        hint = next(a for a in _args(hint) if a is not type(None))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and issubclass(hint, Record):
        hints = _hints(hint)
        skip = value.omitted() if hasattr(value, "omitted") else ()  # fields at an "absent" value
        return {
            f.name: encode(getattr(value, f.name), hints[f.name])
            for f in dataclasses.fields(hint)
            if f.name not in skip
        }
    if hint is Estimate:
        return {k: (_float_out(v) if isinstance(v, float) else v) for k, v in value.to_dict().items()}
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        inner = _args(hint)[0] if _args(hint) else Any
        return [encode(v, inner) for v in value]
    if origin is dict:
        inner = _args(hint)[1]
        return {str(k): encode(v, inner) for k, v in value.items()}
    if hint is float:
        return _float_out(value)
    if hint is Any:
        return _plain(value)
    return value


def _plain(value):
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, Estimate):
        return encode(value, Estimate)
    if isinstance(value, Record):
        return encode(value, type(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return _float_out(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


def decode(value, hint=Any):
    """The inverse of :func:`encode`."""
    if value is None:
        return math.nan if hint is float else None
    if _is_optional(hint):
        hint = next(a for a in _args(hint) if a is not type(None))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and issubclass(hint, Record):
        hints = _hints(hint)
        known = {f.name for f in dataclasses.fields(hint)}
        unknown = set(value) - known
        if unknown:
            raise StaleRecord(f"{hint.__name__} has no fields {sorted(unknown)}")
        return hint(**{k: decode(v, hints[k]) for k, v in value.items()})
    if hint is Estimate:
        fields = dict(value)
        for key in ("mean", "stderr"):
            if key in fields and fields[key] is not None or key == "mean":
                fields[key] = _float_in(fields.get(key))
        return Estimate(**fields)
    origin = typing.get_origin(hint)
    if origin is list:
        inner = _args(hint)[0] if _args(hint) else Any
        return [decode(v, inner) for v in value]
    if origin is tuple:
        inner = _args(hint)[0] if _args(hint) else Any
        return tuple(decode(v, inner) for v in value)
    if origin is dict:
        inner = _args(hint)[1]
        return {k: decode(v, inner) for k, v in value.items()}
    if hint is float:
        return _float_in(value)
    return value
