"""Registry of the swappable axes: models, guides, objectives and procedures, by name.

Entries register themselves where they are defined, with a decorator::

    @register("model", "figure8", summary="...", failure="...", keywords=("multimodal-posterior",))
    class Figure8(LatentGaussian): ...

and are built by name, so that no code dispatches on a name with if/elif chains::

    pf.zoo.names("model")            # ['clusters', 'figure8', 'quadratic']
    truth = pf.zoo.model("figure8")  # a ground-truth process
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyrofail.errors import UsageError

__all__ = ["Entry", "KINDS", "entry", "guide", "model", "names", "objective", "procedure", "register"]

KINDS = ("model", "guide", "objective", "procedure", "regression")
# Where the entries of each kind are defined; imported on first use so that importing
# pyrofail stays cheap and the entry modules may import this one.
_PROVIDERS = {
    "model": "pyrofail.models",
    "guide": "pyrofail.guides",
    "objective": "pyrofail.objectives",
    "procedure": "pyrofail.procedures",
    # processes with inputs, outputs, global weights and per-point latents (BNN + latent noise)
    "regression": "pyrofail.models",
}
_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


@dataclass(frozen=True)
class Entry:
    """One registered model, guide or objective and its metadata."""

    kind: str
    name: str
    factory: Callable[..., Any]
    summary: str
    keywords: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return (self.factory.__doc__ or "").strip()


def register(kind: str, name: str, *, summary: str, keywords=(), **meta):
    """Class or function decorator that registers ``factory`` under ``kind``/``name``."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; choose one of {KINDS}")

    def decorate(factory):
        if name in _REGISTRY[kind] and _REGISTRY[kind][name].factory is not factory:
            raise ValueError(f"{kind} {name!r} is registered twice")
        _REGISTRY[kind][name] = Entry(kind, name, factory, summary, tuple(keywords), dict(meta))
        return factory

    return decorate


def _load(kind: str) -> dict[str, Entry]:
    if kind not in KINDS:
        raise UsageError(f"unknown registry kind {kind!r}; choose one of: {', '.join(KINDS)}")
    importlib.import_module(_PROVIDERS[kind])
    return _REGISTRY[kind]


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind`` (``"model"``, ``"guide"`` or ``"objective"``)."""
    return sorted(_load(kind))


def entry(kind: str, name: str) -> Entry:
    """The :class:`Entry` for ``name``; :class:`UsageError` listing the valid names if unknown."""
    table = _load(kind)
    if name not in table:
        raise UsageError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]


def model(name: str, **options):
    """Build the ground-truth process registered as ``name``."""
    return entry("model", name).factory(**options)


def guide(name: str, **options):
    """Build the variational family registered as ``name``."""
    return entry("guide", name).factory(**options)


def objective(name: str, **options):
    """Build the objective registered as ``name`` (a Pyro ``ELBO`` instance)."""
    return entry("objective", name).factory(**options)


def procedure(name: str):
    """The training procedure registered as ``name``: ``(config, problem) -> FitResult``."""
    return entry("procedure", name).factory
