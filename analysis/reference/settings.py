r"""The settings of the NUTS reference: every knob once, with its default and its check.

:class:`NutsSettings` is a frozen dataclass: the steps of :mod:`pyrofail.analysis.reference.steps`
read it and nothing else, the reference records it in its provenance (:meth:`NutsSettings.record`),
and a bad value is a :class:`~pyrofail.errors.UsageError` naming the knob when it is made, not
deep inside a run. ``NutsSettings(**options)`` takes the keyword options of
:func:`pyrofail.analysis.reference.reference_posterior` (method ``"nuts"``).

Example:
    >>> s = NutsSettings(num_draws=200, num_chains=2)
    >>> s.per_chain, s.max_chains
    (100, 16)
    >>> NutsSettings(num_chains=1)
    Traceback (most recent call last):
    ...
    pyrofail.errors.UsageError: num_chains=1 is not allowed; expected an integer >= 2
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from pyrofail.errors import UsageError, check_choice, check_positive_int

__all__ = ["DTYPES", "INITS", "PRECONDITIONS", "UNIMODAL", "NutsSettings"]

INITS = ("modes", "prior", "given")
PRECONDITIONS = ("block", "diagonal")
UNIMODAL = ("importance", "nuts")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _unit(name: str, value, *, closed_low: bool) -> float:
    """A number in [0, 1) (``closed_low``) or (0, 1)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not ((0 <= v if closed_low else 0 < v) and v < 1):
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise UsageError(f"{name}={value!r} is not allowed; expected a number in {interval}")
    return v


@dataclass(frozen=True)
class NutsSettings:
    r"""Every setting of the NUTS reference (:mod:`pyrofail.analysis.reference.nuts`).

    :param num_draws: draws kept per point after warm-up over ``num_chains`` chains: each chain
        keeps ``ceil(num_draws / num_chains)`` (:attr:`per_chain`), and starting by mass may
        add chains.
    :param num_chains: the least number of chains per point (at least 2, so that :math:`\hat R`
        exists).
    :param max_chains: the most chains per point that starting by mass may use (``init="modes"``).
    :param num_warmup: warm-up iterations (step size and diagonal mass matrix adaptation).
    :param target_accept_prob: the step-size adaptation's target acceptance probability.
    :param max_tree_depth: at most :math:`2^{\text{depth}}` leapfrog steps per iteration.
    :param jit_compile: trace the potential with the PyTorch JIT, as Pyro's own
        ``jit_compile`` does (helps small problems, where Python overhead dominates).
    :param precondition: ``"block"``: sample :math:`u` in :math:`z = z_0 + L u`, with
        :math:`L L^\top` the inverse Hessian of each sub-problem at its start (a dense
        :math:`K \times K` block per chain and point); ``"diagonal"``: sample :math:`z`, with
        the diagonal mass matrix started from the Hessian's diagonal. Either way the warm-up
        then adapts a diagonal mass matrix.
    :param init: ``"modes"`` (chains at the local maxima by mass), ``"prior"`` (independent
        prior draws) or ``"given"`` (starting points passed to the run). The maxima are found
        in every case, for the importance proposal.
    :param init_candidates: quasi-random optimisation starts per point.
    :param num_importance: importance draws per point for the re-weighting and
        :math:`\log p(x)`.
    :param defensive: weight :math:`\alpha` of the prior in the importance proposal.
    :param dtype: ``"float64"`` or ``"float32"``.
    :param top_up: rounds of further chains at the maxima that no chain's draws cover; 0: none.
    :param point_batch: sample this many points at a time (``None``: all at once). The points
        of one run share a step size, so one point whose posterior needs tiny steps (a cliff)
        slows every other point of its run to a crawl; smaller batches keep that to its batch.
    :param start_share: a maximum with at least this share of the Laplace mass gets a chain of
        its own (and a top-up chain when no draw covers it).
    :param top_up_step: leapfrog step of the top-up chains, in units of the Laplace scale at
        their start (the first round's adapted step can be tiny, from one point at a cliff).
    :param max_divergent_steps: divergent leapfrog steps kept for the search of maxima along them.
    :param unimodal: ``"importance"``: a point whose maxima search finds one maximum is first
        tried by importance sampling from its Laplace approximation
        (:mod:`pyrofail.analysis.reference.unimodal`) and keeps those weighted independent draws
        when the weights pass their checks; ``"nuts"``: every point is sampled by NUTS.
    """

    num_draws: int = 2000
    num_chains: int = 4
    max_chains: int = 16
    num_warmup: int = 500
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    jit_compile: bool = False
    precondition: str = "diagonal"
    init: str = "modes"
    init_candidates: int = 32
    num_importance: int = 4000
    defensive: float = 0.1
    dtype: str = "float64"
    top_up: int = 1
    point_batch: int | None = None
    start_share: float = 0.005
    top_up_step: float = 0.25
    max_divergent_steps: int = 256
    unimodal: str = "importance"

    def __post_init__(self):
        put = object.__setattr__  # frozen: checked values are written once, here
        minima = {
            "num_draws": 1,
            "num_chains": 2,
            "max_chains": None,  # at least num_chains
            "num_warmup": 0,
            "max_tree_depth": 1,
            "init_candidates": 1,
            "num_importance": 10,
            "top_up": 0,
            "max_divergent_steps": 0,
        }
        for name, least in minima.items():
            least = self.num_chains if least is None else least
            put(self, name, check_positive_int(name, getattr(self, name), minimum=least))
        if self.point_batch is not None:
            put(self, "point_batch", check_positive_int("point_batch", self.point_batch))
        for name, closed_low in (("target_accept_prob", False), ("defensive", True), ("start_share", False)):
            put(self, name, _unit(name, getattr(self, name), closed_low=closed_low))
        try:
            step = float(self.top_up_step)
        except (TypeError, ValueError):
            step = math.nan
        if not (step > 0 and math.isfinite(step)):
            raise UsageError(f"top_up_step={self.top_up_step!r} is not allowed; expected a finite number > 0")
        put(self, "top_up_step", step)
        put(self, "jit_compile", bool(self.jit_compile))
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("precondition", self.precondition, PRECONDITIONS)
        check_choice("init", self.init, INITS)
        check_choice("unimodal", self.unimodal, UNIMODAL)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, **options) -> NutsSettings:
        """``NutsSettings(**options)``, with an unknown name a :class:`UsageError` that lists the
        known ones (rather than a ``TypeError``)."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise UsageError(
                f"unknown NUTS reference option {unknown[0]!r}; choose from: {', '.join(cls.names())}"
            )
        return cls(**options)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def per_chain(self) -> int:
        """Draws kept per chain: ``ceil(num_draws / num_chains)``."""
        return math.ceil(self.num_draws / self.num_chains)

    def record(self, extra_candidates: int = 0) -> dict:
        """The settings as the reference's provenance records them (``options``), with the
        number of extra optimisation starts the run was given."""
        out = asdict(self)
        out["extra_candidates"] = int(extra_candidates)
        return out
