"""A run's options and one job's resolved configuration, as records: :class:`RunOptions` and
:class:`JobConfig`, both generated from the option schema (:data:`pyrofail.options.OPTIONS`).

``config.json`` holds the run's resolved options (:class:`RunOptions`: every option of the
schema except the ones that describe a user's data, which are gathered in ``data_options``,
and the ``preset``) and its job list.

A job config is what :func:`pyrofail.sweep.expand` makes of the run's options for one job and
what a finished job's ``metrics.json`` repeats (``config``): the job's sweep values, every
option of kind ``"fit"`` of :data:`pyrofail.options.OPTIONS` (the options that change a fit)
with its per-guide, per-objective, per-procedure and per-process tables resolved for the job, and
a user's data source with its options. Its fields are **generated from the option schema**, so
that adding an option touches the schema and the code that uses it, nothing here: the sweep
axes and the few fields the sweep adds are declared below; every ``"fit"`` option becomes a
field of the same name with the schema's default. The options that are merged into a table
before a job sees them (:data:`RESOLVED_AWAY`) are not fields.

In JSON a config is a flat object; fields at their "absent" value are left out
(:meth:`JobConfig.to_dict`), so a joint-training zoo job reads as it always did and every
field a reader needs is an attribute with its default.

Example:
    >>> c = JobConfig(process="figure8", latent_dim=2, guide="flow", objective="iwae")
    >>> (c.procedure, c.truth_noise, c.n_test)
    ('joint', None, 2000)
    >>> JobConfig.from_dict(c.to_dict()) == c
    True
    >>> "procedure" in c.to_dict(), "truth_noise" in c.to_dict()
    (False, False)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pyrofail.options import OPTIONS, defaults, job_names
from pyrofail.records.schema import Record, StaleRecord, decode, encode
from pyrofail.runs import RUN_FORMAT

__all__ = ["RESOLVED_AWAY", "JobConfig", "RunOptions"]

# options of kind "fit" that a job never holds under their own name: the command line merges
# them into the per-objective options (num_particles, matched_budget) or the learning rate
RESOLVED_AWAY = ("num_particles", "matched_budget", "lr_by_guide")


class _Flat(Record):
    """A record kept as a flat JSON object inside another file (no ``kind``, no ``version``)."""

    def to_dict(self) -> dict:
        """The record as plain JSON."""
        return encode(self, type(self))

    @classmethod
    def from_dict(cls, data: dict):
        """The record of a plain JSON object; unknown keys raise :class:`StaleRecord`."""
        if not isinstance(data, dict):
            raise StaleRecord(f"{cls.__name__} is an object, not {type(data).__name__}")
        return decode(data, cls)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class _JobConfigBase(_Flat):
    """Methods of :class:`JobConfig` (its fields are generated below)."""

    def omitted(self) -> set[str]:
        """Fields left out of the JSON: those at their "absent" value."""
        out = set()
        if self.truth_noise is None:
            out.add("truth_noise")
        if self.procedure == "joint":
            out |= {"procedure", "procedure_options"}
        if not self.truth_options:
            out.add("truth_options")
        if self.data is None:
            out |= {"data", "data_options"}
        if not self.aggregate_kl:
            out.add("aggregate_kl")
        return out

    def sample_key(self) -> dict:
        """What a job's data are a function of, for a process's records shared by its jobs
        (references, hardness): the split sizes and the seed."""
        return {k: getattr(self, k) for k in ("n_train", "n_val", "n_test", "seed")}

    @property
    def fold(self) -> int | None:
        """The held-out fold of a cross-fitted job on a user's data (``None``: not cross-fitted)."""
        return (self.data_options or {}).get("fold")

    @property
    def folds(self) -> int:
        return int((self.data_options or {}).get("folds") or 1)


def _default(value):
    if isinstance(value, (dict, list)):
        return dataclasses.field(default_factory=lambda v=value: type(v)(v))
    return dataclasses.field(default=value)


# the sweep axes of a job (one value each) and what the sweep adds; then every fit option
_DECLARED = [
    ("process", "str | None", _default(None)),  # a zoo process (None on a user's data)
    ("latent_dim", int, _default(1)),
    ("guide", str, _default("mean_field")),
    ("objective", str, _default("elbo")),
    ("procedure", str, _default("joint")),
    ("truth_noise", "float | None", _default(None)),  # the truth's σ (None: the process's own)
    ("data", Any, _default(None)),  # a user's data source (a bundled set's name or a path)
    ("data_options", "dict[str, Any] | None", _default(None)),
    ("aggregate_kl", bool, _default(False)),  # runs with LiBI: measure the aggregate KL
    ("format", int, _default(RUN_FORMAT)),
]
_FIT = [
    (name, Any, _default(OPTIONS[name].default))
    for name in job_names()
    if name not in RESOLVED_AWAY and name not in {n for n, *_ in _DECLARED}
]

JobConfig = dataclasses.make_dataclass(
    "JobConfig",
    _DECLARED + _FIT,
    bases=(_JobConfigBase,),
    namespace={"__module__": __name__},
)
JobConfig.__doc__ = (
    "One job's resolved configuration (module docstring). Fields: "
    + ", ".join(f.name for f in dataclasses.fields(JobConfig))
    + "."
)


class _RunOptionsBase(_Flat):
    """Methods of :class:`RunOptions` (its fields are generated below)."""

    def omitted(self) -> set[str]:
        return {"data_options"} if self.data_options is None else set()

    @property
    def on_data(self) -> bool:
        """Whether the run fits a user's data (no ground truth)."""
        return self.data is not None


RunOptions = dataclasses.make_dataclass(
    "RunOptions",
    [("preset", "str | None", _default(None)), ("data_options", "dict[str, Any] | None", _default(None))]
    + [(name, Any, _default(value)) for name, value in defaults().items()],
    bases=(_RunOptionsBase,),
    namespace={"__module__": __name__},
)
RunOptions.__doc__ = (
    "A run's resolved options (``config.json``'s ``options``; module docstring): ``preset``, "
    "``data_options`` (a user's data options, gathered) and every option of the schema but "
    "those of kind ``data``, each with the schema's default."
)
