r"""Any Pyro model and guide, as the analysis sees a model and a guide: :func:`adapt`.

A VAE written the way Pyro's own example writes it (``examples/vae/vae.py``: ``pyro.module``,
``pyro.plate("data", x.shape[0])``, a latent site with ``.to_event(1)``, a Bernoulli or Gaussian
observed site, the guide sampling the same site from an encoder) becomes a ``(model, guide)``
pair with the zoo's contract: ``model.latent_dim``, ``model.data_dim``,
``model.log_joint(z, x)`` on the unconstrained latent space (with the change of variables of
every constrained site; :mod:`pyrofail.programs.adapter`), ``guide.distribution(x)``. Every
measure of ``pyrofail.analysis`` then applies to it: the reference posterior, the bias of the
guide, the hardness of the points. Only Pyro's machinery is used (``poutine.trace``,
``poutine.condition``, ``pyro.plate``, ``biject_to``); what the pair is made of is read from one
trace of each program (:mod:`pyrofail.programs.sites`), how draws run through them is in
:mod:`pyrofail.programs.run`.

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    ...         pyro.sample("x", dist.Normal(2 * z, 1.0).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(0.4 * x, 0.45).to_event(1))
    >>> x = torch.tensor([[1.0], [-0.5]])
    >>> m, g = adapt(model, guide, x)
    >>> m.latent_dim, m.data_dim, type(m).__name__
    (1, 1, 'LatentGaussianProgram')
    >>> z = g.distribution(x).sample((5,))
    >>> tuple(z.shape), tuple(m.log_joint(z, x).shape)
    ((5, 2, 1), (5, 2))
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
from pyro import poutine

from pyrofail.errors import UsageError, check_choice
from pyrofail.programs.adapter import LatentGaussianProgram, ProgramGuide, ProgramModel, ProgramPosterior
from pyrofail.programs.run import Program
from pyrofail.programs.sites import Layout, discover, per_point_shape, sample_sites

__all__ = ["LatentGaussianProgram", "ProgramGuide", "ProgramModel", "ProgramPosterior", "adapt", "is_adapted"]

VECTORIZE = ("auto", True, False)
PROBE_POINTS = 3  # rows the adapter probes the programs on (fewer than N: the plate must follow x)
PROBE_DRAWS = 2


def is_adapted(model, guide) -> bool:
    """Whether ``(model, guide)`` already has the analysis protocol (``log_joint``,
    ``latent_dim``, ``data_dim``; ``distribution``): the zoo's classes and adapted pairs."""
    return all(hasattr(model, a) for a in ("log_joint", "latent_dim", "data_dim")) and hasattr(
        guide, "distribution"
    )


def _modules(fn, depth: int = 0):
    """The torch modules a callable closes over: itself, its bound ``self``, a partial's
    function and arguments, its closure cells."""
    if depth > 2:
        return
    if isinstance(fn, torch.nn.Module):
        yield fn
    if inspect.ismethod(fn) and isinstance(fn.__self__, torch.nn.Module):
        yield fn.__self__
    if isinstance(fn, functools.partial):
        for a in (fn.func, *fn.args, *fn.keywords.values()):
            yield from _modules(a, depth + 1)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(v, torch.nn.Module):
            yield v


def _parameters(fns, traces) -> list:
    """The leaf tensors the programs read their weights from: the ``param`` sites of their
    traces (``pyro.module``, ``pyro.param``, ``PyroModule``; unconstrained leaves) and the
    parameters of the modules they close over."""
    seen = {}
    for tr in traces:
        for site in tr.nodes.values():
            if site["type"] != "param":
                continue
            v = site["value"]
            leaf = v.unconstrained() if callable(getattr(v, "unconstrained", None)) else v
            if isinstance(leaf, torch.Tensor) and leaf.is_leaf:
                seen[id(leaf)] = leaf
    for fn in fns:
        for mod in _modules(fn):
            for p in mod.parameters():
                seen[id(p)] = p
    return list(seen.values())


def _fails(what: str, n: int, total: int, err: Exception) -> UsageError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return UsageError(
        f"the {what} fails on {n} rows of x (it ran on all N = {total}): {type(err).__name__}: {first}; "
        "allowed: a data plate of size x.shape[0], so that it runs on any number of points"
    )


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-3, equal_nan=False))


def _probe(model: ProgramModel, guide: ProgramGuide, xs: torch.Tensor, total: int, vectorize) -> None:
    """Run both programs flat on a few rows (refusing a program that cannot run on fewer
    points than N), then vectorised where ``vectorize`` allows, keeping it only where it
    gives the same numbers."""
    mp, gp = model.program, guide.program
    mp.vectorized = gp.vectorized = False
    n = xs.shape[0]
    try:
        u = guide.distribution(xs).sample((PROBE_DRAWS,))
        lq = guide.distribution(xs).log_prob(u)
    except Exception as err:  # noqa: BLE001 - the user's program raised: say what and where
        raise _fails("guide", n, total, err) from None
    try:
        lp = model.log_joint(u, xs)
    except Exception as err:  # noqa: BLE001
        raise _fails("model", n, total, err) from None
    if vectorize is False:
        return
    for prog, check in (
        (gp, lambda: guide.distribution(xs).log_prob(u)),
        (mp, lambda: model.log_joint(u, xs)),
    ):
        prog.vectorized = True
        try:
            same = _close(check(), lq if prog is gp else lp)
            if prog is gp:
                same = same and tuple(guide.distribution(xs).sample((PROBE_DRAWS,)).shape) == tuple(u.shape)
        except Exception:  # noqa: BLE001 - a program that does not broadcast runs flat
            same = False
        prog.vectorized = bool(same) or vectorize is True


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _latent_gaussian(model: ProgramModel, trace, x: torch.Tensor, xs: torch.Tensor):
    r"""``model`` as a :class:`LatentGaussianProgram` when its trace shows
    :math:`\mathcal N(0, I)` latents on the real line and one Gaussian observed site whose scale
    is the same for every point, and the closed form agrees with ``log_joint`` at probe draws;
    else ``model`` unchanged."""
    lay, p = model.program.layout, model.program
    sites = dict(sample_sites(trace))
    if len(lay.sites) != 1 or lay.sites[0].support != repr(torch.distributions.constraints.real):
        return model
    prior = _base(sites[lay.sites[0].name]["fn"])
    if type(prior) is not torch.distributions.Normal and not isinstance(prior, torch.distributions.Normal):
        return model
    if not (bool((prior.loc == 0).all()) and bool((prior.scale == 1).all())):
        return model
    observed = [(k, s) for k, s in sites.items() if s["is_observed"]]
    if len(observed) != 1 or len(sites) != 2:
        return model
    name, obs = observed[0]
    base = _base(obs["fn"])
    n, d = x.shape[0], lay.data_dim
    if (
        not isinstance(base, torch.distributions.Normal)
        or math.prod(per_point_shape(obs, lay.model_dim)) != d
    ):
        return model
    scale = base.scale.expand(base.batch_shape).reshape(n, d)
    if not bool((scale == scale[:1]).all()):
        return model
    out = LatentGaussianProgram(p, scale[0].to(p.dtype), name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = torch.randn(PROBE_DRAWS, xs.shape[0], lay.latent_dim, dtype=p.dtype, device=p.device)
    try:
        lj = model.log_joint(z, xs)
        f = out.mean(z)
    except Exception:  # noqa: BLE001 - no fast path, the generic one stays
        return model
    sigma = out.noise_scale
    k = lay.latent_dim
    closed = (
        -0.5 * (z * z).sum(-1)
        - 0.5 * k * math.log(2 * math.pi)
        - 0.5 * (((xs.to(p.dtype) - f) / sigma) ** 2).sum(-1)
        - sigma.log().sum()
        - 0.5 * d * math.log(2 * math.pi)
    )
    return out if _close(closed, lj) else model


def adapt(model, guide, x, *, kwargs: dict | None = None, data_plate: str | None = None, vectorize="auto"):
    r"""``(model, guide)`` objects with the analysis protocol for a Pyro model and guide.

    :param model: a Pyro model ``model(x, **kwargs)`` (a function, a bound method, a
        ``PyroModule``) whose local latent sites and observed sites sit in a data plate of size
        ``x.shape[0]``; its trained weights (``pyro.module``, ``PyroModule``, the param store)
        are used as they are, never changed.
    :param guide: its guide ``guide(x, **kwargs)``, sampling the same latent sites.
    :param x: the data ``(N, ...)``, as the programs take it (``(N, 1, 8, 8)`` images stay
        images for the programs; the analysis sees ``(N, D)``, ``D`` the product).
    :param kwargs: keyword arguments of both programs, as ``SVI.step(x, **kwargs)`` passes
        them (not per-point data: the analysis calls the programs on other rows).
    :param data_plate: the name of the data plate when the observed sites share several
        plates of size :math:`N`.
    :param vectorize: ``"auto"`` runs the draws through the programs in an extra plate where a
        probe on a few rows gives the same numbers as running them flat; ``True`` or ``False``
        forces it.
    :returns: ``(model, guide)``: a :class:`ProgramModel` (a :class:`LatentGaussianProgram`
        when the model is :math:`\mathcal N(0, I)` latents with a Gaussian likelihood of fixed
        scale) and a :class:`ProgramGuide`.
    :raises UsageError: one line naming the site, for what it cannot handle
        (:mod:`pyrofail.programs.sites`).
    """
    check_choice("vectorize", vectorize, VECTORIZE)
    x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[0] < 1:
        raise UsageError(f"x has shape {tuple(x.shape)}; expected (N, ...) with N >= 1 rows")
    if not callable(model) or not callable(guide):
        raise UsageError("model and guide must be callables model(x, **kwargs) and guide(x, **kwargs)")
    kwargs = dict(kwargs or {})
    n = x.shape[0]
    with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
        model_trace = poutine.trace(model).get_trace(x, **kwargs)
        guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
    layout: Layout = discover(model_trace, guide_trace, n, tuple(x.shape[1:]), data_plate)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    params = _parameters((model, guide), (model_trace, guide_trace))
    mprog = Program(model, layout, layout.model_dim, kwargs, x.dtype, dtype, x.device, params)
    gprog = Program(guide, layout, layout.guide_dim, kwargs, x.dtype, dtype, x.device, params)
    reparam = all(guide_trace.nodes[s.name]["fn"].has_rsample for s in layout.sites)
    only = layout.sites[0]
    mean_field = (
        len(layout.sites) == 1
        and only.support == repr(torch.distributions.constraints.real)
        and isinstance(_base(guide_trace.nodes[only.name]["fn"]), torch.distributions.Normal)
    )
    m, g = ProgramModel(mprog), ProgramGuide(gprog, reparam, mean_field)
    xs = x.reshape(n, -1)[: min(n, PROBE_POINTS)]
    with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
        torch.manual_seed(0)
        _probe(m, g, xs, n, vectorize)
        m = _latent_gaussian(m, model_trace, x.reshape(n, -1), xs)
    return m, g
