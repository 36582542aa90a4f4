r"""What a Pyro model/guide pair is made of: its data plate, its local latent sites, and the refusals.

:func:`discover` traces the model and the guide once on the data (``poutine.trace``) and reads
from the traces (each site's ``cond_indep_stack``, ``fn``, ``value``, ``scale``):

* the **data plate**: the vectorised ``pyro.plate`` that holds every observed site and has size
  :math:`N` = ``x.shape[0]`` (or the plate named by ``data_plate``);
* the **local latent sites**: the model's unobserved sample sites, all inside the data plate;
  per data point each has a shape :math:`P_s` (inner plates right of the data plate, then the
  event shape) and a support :math:`\mathcal S_s`;
* the map from :math:`\mathbb R^{K}` to the latent sites: :math:`T_s` =
  ``biject_to(support)`` (the same bijection Pyro's autoguides and HMC use), taking the
  :math:`k_s = |T_s^{-1}\text{-shape}(P_s)|` unconstrained coordinates of site :math:`s` to the
  support, and :math:`z = (u_1, \dots, u_S)` their concatenation in trace order,
  :math:`K = \sum_s k_s`.

Everything the analysis cannot handle is refused with one line (:class:`~pyrofail.errors.UsageError`)
naming the site and what is allowed: a global latent (a sample site outside the data plate), a
discrete latent (enumeration is not implemented), no data plate, a data plate whose size is not
:math:`N`, a scaled site (``poutine.scale``, subsampling), a guide site the model does not have
(auxiliary guide variables) or a model latent the guide does not sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample

from pyrofail.errors import UsageError

__all__ = ["Layout", "Site", "discover", "per_point_shape", "sample_sites"]

PARTICLES = "_pyrofail_particles"  # the name of the plate over draws that the adapter adds


@dataclass
class Site:
    """One local latent site: its per-point (constrained) ``shape``, the bijection ``transform``
    from the unconstrained ``ushape`` onto its support, and where its ``size`` unconstrained
    coordinates sit in :math:`z` (``offset``)."""

    name: str
    shape: tuple
    ushape: tuple
    size: int
    offset: int
    transform: torch.distributions.Transform
    support: str
    family: str


@dataclass
class Layout:
    """The pair's structure: the data plate (its name and ``dim`` in the model and the guide),
    the plate nesting of both programs (the particle plate goes at ``-(nesting + 1)``), the
    latent sites and the per-point shape of ``x``."""

    plate: str
    model_dim: int
    guide_dim: int
    nesting: int
    sites: list
    x_shape: tuple

    @property
    def latent_dim(self) -> int:
        return sum(s.size for s in self.sites)

    @property
    def data_dim(self) -> int:
        return math.prod(self.x_shape)


def sample_sites(trace):
    """The sample sites of a trace that carry density: no subsample or deterministic sites."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("_deterministic"):
            continue
        yield name, site


def _frames(site):
    return [f for f in site["cond_indep_stack"]]


def _family(fn) -> str:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__


def _base_support(c):
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def per_point_shape(site, dim: int) -> tuple:
    """The shape of one data point's value of ``site`` in a plate at ``dim``: the batch dims
    right of ``dim``, then the event shape."""
    fn = site["fn"]
    batch = tuple(fn.batch_shape)
    inner = batch[len(batch) + dim + 1 :] if dim < -1 else ()
    return inner + tuple(fn.event_shape)


def _data_plate(trace, n: int, name: str | None, what: str):
    """The frame of the data plate in ``trace``: the named one, or the vectorised plate of size
    ``n`` common to every observed site (the outermost if several)."""
    sites = list(sample_sites(trace))
    plates = {f.name: f for _, s in sites for f in _frames(s)}
    for f in plates.values():
        if not f.vectorized:
            raise UsageError(
                f"the {what}'s plate {f.name!r} is sequential (a Python loop over pyro.plate); "
                "allowed: a vectorised pyro.plate over the data"
            )
    if name is not None:
        if name not in plates:
            have = ", ".join(repr(p) for p in plates) or "none"
            raise UsageError(f"the {what} has no plate named {name!r} (its plates: {have})")
        frame = plates[name]
    else:
        # the model's data plate holds its observed sites; the guide's, its samples
        observed = [s for _, s in sites if s["is_observed"] or what == "guide"]
        if not observed:
            kind = "observed" if what == "model" else "sample"
            raise UsageError(
                f"the {what} has no {kind} site; allowed: {kind} sites inside pyro.plate('data', x.shape[0])"
            )
        common = set.intersection(*({f.name for f in _frames(s)} for s in observed))
        if not common:
            bare = [s["name"] for s in observed if not _frames(s)]
            site = bare[0] if bare else observed[0]["name"]
            raise UsageError(
                f"no data plate: the {what}'s site {site!r} is in no pyro.plate common to all its "
                f"{'observed ' if what == 'model' else ''}sites; allowed: every site inside "
                "pyro.plate('data', x.shape[0])"
            )
        sized = [plates[c] for c in common if plates[c].size == n]
        if not sized:
            f = min((plates[c] for c in common), key=lambda f: f.dim)
            raise UsageError(
                f"the {what}'s data plate {f.name!r} has size {f.size} but x has N = {n} rows; "
                "allowed: a data plate of size x.shape[0] (no subsampling)"
            )
        frame = min(sized, key=lambda f: f.dim)  # the outermost
    if frame.size != n:
        raise UsageError(
            f"the {what}'s data plate {frame.name!r} has size {frame.size} but x has N = {n} rows; "
            "allowed: a data plate of size x.shape[0] (no subsampling)"
        )
    return frame


def _check_site(name, site, frame, what: str):
    """Refuse a site outside the data plate, in a plate left of it, or scaled."""
    names = [f.name for f in _frames(site)]
    if frame.name not in names:
        if site["is_observed"]:
            raise UsageError(
                f"the {what}'s observed site {name!r} is outside the data plate {frame.name!r}; "
                "allowed: every sample site inside the data plate (per-point densities only)"
            )
        raise UsageError(
            f"global latent site {name!r} in the {what} is outside the data plate {frame.name!r}; "
            "allowed: local latents inside the data plate (fix globals with poutine.condition)"
        )
    for f in _frames(site):
        if f.name != frame.name and f.dim < frame.dim:
            raise UsageError(
                f"the {what}'s site {name!r} is in plate {f.name!r} (dim {f.dim}) left of the data plate "
                f"{frame.name!r} (dim {frame.dim}); allowed: inner plates right of the data plate"
            )
    scale = torch.as_tensor(site["scale"])
    if not bool((scale == 1).all()):
        raise UsageError(
            f"the {what}'s site {name!r} is scaled (poutine.scale or plate subsampling); "
            "allowed: unscaled sites (the check needs the model's own density)"
        )


def _nesting(trace) -> int:
    depth = 0
    for _, site in sample_sites(trace):
        depth = max(depth, *(-f.dim for f in _frames(site) if f.vectorized), 0)
        depth = max(depth, len(site["fn"].batch_shape))
    return depth


def discover(model_trace, guide_trace, n: int, x_shape: tuple, data_plate: str | None = None) -> Layout:
    """The :class:`Layout` of a model and guide from their traces on ``n`` data points (see
    the module docstring for what is refused)."""
    frame = _data_plate(model_trace, n, data_plate, "model")
    latents = []
    for name, site in sample_sites(model_trace):
        _check_site(name, site, frame, "model")
        if site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            raise UsageError(
                f"discrete local latent site {name!r} ({_family(site['fn'])}) is not supported "
                "(enumeration is not implemented); allowed: continuous latent sites"
            )
        latents.append((name, site))
    if not latents:
        raise UsageError("the model has no latent sample site; allowed: local latents inside the data plate")
    names = [n_ for n_, _ in latents]
    guide_sites = dict(sample_sites(guide_trace))
    for name, site in guide_sites.items():
        if site["is_observed"]:
            continue
        if name not in names:
            raise UsageError(
                f"guide site {name!r} is not a latent site of the model (auxiliary guide variables are "
                f"not supported); allowed: the model's latent sites {names}"
            )
    plate_name = (
        frame.name if any(frame.name in [f.name for f in _frames(s)] for s in guide_sites.values()) else None
    )
    gframe = _data_plate(guide_trace, n, plate_name, "guide")
    sites, offset = [], 0
    for name, site in latents:
        if name not in guide_sites:
            raise UsageError(
                f"the guide does not sample the model's latent site {name!r}; allowed: a guide site for each"
            )
        gsite = guide_sites[name]
        _check_site(name, gsite, gframe, "guide")
        shape = per_point_shape(site, frame.dim)
        gshape = per_point_shape(gsite, gframe.dim)
        if gshape != shape:
            raise UsageError(
                f"site {name!r} has shape {shape} per point in the model but {gshape} in the guide; "
                "allowed: the same shape"
            )
        support = site["fn"].support
        gsupport = gsite["fn"].support
        if repr(_base_support(gsupport)) != repr(_base_support(support)):
            raise UsageError(
                f"guide site {name!r} has support {_base_support(gsupport)} but the model's is "
                f"{_base_support(support)}; allowed: the same support"
            )
        transform = biject_to(support)
        ushape = tuple(transform.inverse_shape(torch.Size(shape)))
        size = math.prod(ushape)
        sites.append(
            Site(
                name,
                shape,
                ushape,
                size,
                offset,
                transform,
                repr(_base_support(support)),
                _family(site["fn"]),
            )
        )
        offset += size
    nesting = max(_nesting(model_trace), _nesting(guide_trace), -frame.dim, -gframe.dim)
    return Layout(frame.name, frame.dim, gframe.dim, nesting, sites, tuple(x_shape))
