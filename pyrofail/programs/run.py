r"""Running a Pyro program on many draws of its local latents at once, and reading per-point densities.

A :class:`Program` wraps a model or a guide (a callable ``fn(x, **kwargs)``) with the
:class:`~pyrofail.programs.sites.Layout` of the pair. Given ``S`` draws of the concatenated
unconstrained latents ``u`` ``(S, n', K)`` (``n'`` is ``n`` or 1, broadcast over the points)
and ``n`` data points it

1. maps each site's block of ``u`` to its support, :math:`y_s = T_s(u_s)`, with
   :math:`\log\lvert\det \partial T_s / \partial u_s\rvert` (:func:`to_sites`);
2. runs the program once with every latent site conditioned on its :math:`y_s`
   (``poutine.condition``) under ``poutine.trace``, inside an extra ``pyro.plate`` over the
   ``S`` draws at ``dim = -(nesting + 1)``, left of every plate of the program: the draws
   broadcast through the program as Pyro's vectorised particles do (``Trace_ELBO(
   vectorize_particles=True)``), so a decoder runs once on ``(S, 1, K)`` for all points;
3. sums every sample site's ``log_prob`` (masked) over the dims right of the data plate:
   ``(S, n)``.

A program that does not broadcast over an extra left dim (a ``view`` to ``(N, -1)``, say) runs
**flat** instead: the ``S`` draws and ``n`` points become ``S n`` rows of one data plate,
which any per-point program accepts (the decoder then runs ``S n`` times). ``vectorized``
chooses; :func:`pyrofail.programs.adapt` probes which one gives the same numbers.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch.distributions.utils import probs_to_logits

from pyrofail.programs.sites import PARTICLES, Layout, sample_sites

__all__ = ["Program", "align", "from_sites", "to_sites"]

BUDGET = 2**23  # (draw, point, feature) triples held at once
LOG_2PI = math.log(2 * math.pi)
_BERNOULLI = (torch.distributions.Bernoulli, pyro.distributions.Bernoulli)
_NORMAL = (torch.distributions.Normal, pyro.distributions.Normal)


def _sum_to(t, lead: tuple) -> torch.Tensor:
    """Sum ``t`` over every dim right of the leading ``lead`` ones (broadcast first)."""
    t = torch.as_tensor(t)
    t = torch.broadcast_to(t, (*lead, *t.shape[len(lead) :]) if t.dim() >= len(lead) else lead)
    return t.reshape(*lead, -1).sum(-1)


def to_sites(layout: Layout, u: torch.Tensor):
    r"""The latent sites' values :math:`y_s = T_s(u_s)` ``{name: (S, n, *P_s)}`` from ``u``
    ``(S, n, K)``, and :math:`\sum_s \log\lvert\det J_{T_s}(u_s)\rvert` ``(S, n)``."""
    lead = tuple(u.shape[:2])
    values, ladj = {}, torch.zeros(lead, dtype=u.dtype, device=u.device)
    for s in layout.sites:
        us = u[..., s.offset : s.offset + s.size].reshape(*lead, *s.ushape)
        y = s.transform(us)
        ladj = ladj + _sum_to(s.transform.log_abs_det_jacobian(us, y), lead)
        values[s.name] = y
    return values, ladj


def from_sites(layout: Layout, values: dict) -> torch.Tensor:
    """``u`` ``(S, n, K)`` from the sites' values ``{name: (S, n, *P_s)}``: the inverse of
    :func:`to_sites`."""
    parts = []
    for s in layout.sites:
        y = values[s.name]
        parts.append(s.transform.inv(y).reshape(*y.shape[:2], s.size))
    return torch.cat(parts, -1)


def align(z: torch.Tensor, x: torch.Tensor):
    r"""Bring ``z`` ``(..., K)`` and ``x`` ``(..., D)`` with broadcasting leading shapes to the
    layout the programs run in: ``z`` ``(S, n', K)``, ``x`` ``(n, D)``; also returns
    ``restore``, which takes the ``(S, n)`` result back to the broadcast leading shape.

    The data axis is the one leading axis along which ``x`` varies (the grid's ``(G, 1, K)``
    against ``(1, n, D)``, the NUTS draws ``(C, N, K)`` against ``(N, D)``, draws per point
    ``(N, S, K)`` against ``(N, 1, D)``); every other axis holds draws. When ``x`` varies along
    several axes, every pair becomes a point of its own.
    """
    k, d = z.shape[-1], x.shape[-1]
    shape = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
    r = len(shape)
    zp = z.reshape(*(1,) * (r - z.dim() + 1), *z.shape)
    xp = x.reshape(*(1,) * (r - x.dim() + 1), *x.shape)
    axes = [i for i in range(r) if xp.shape[i] > 1]
    if not axes:
        return z.reshape(-1, 1, k), x.reshape(1, d), lambda out: out.reshape(shape)
    if len(axes) == 1:
        a = axes[0]
        zm, xm = zp.movedim(a, -2), xp.movedim(a, -2)
        lead = tuple(zm.shape[:-2])
        n = xm.shape[-2]

        def restore(out):
            return out.reshape(*lead, n).movedim(-1, a)

        return zm.reshape(-1, zm.shape[-2], k), xm.reshape(n, d), restore
    m = shape.numel()
    zf = zp.expand(*shape, k).reshape(1, m, k)
    xf = xp.expand(*shape, d).reshape(m, d)
    return zf, xf, lambda out: out.reshape(shape)


def _compact(t: torch.Tensor, i: int, s: int):
    """``t`` without its expansion along the data axis ``i`` (``None`` if it varies there), as
    ``(s, -1)``: one row of parameters per draw."""
    if t.shape[i] != 1 and t.stride(i) != 0:
        return None
    t = t.narrow(i, 0, 1)
    return torch.broadcast_to(t, (s, *t.shape[1:])).reshape(s, -1)


def _shared_points(site, s: int, n: int, dim: int):
    r"""An observed Bernoulli or Gaussian site's ``(s, n)`` log-densities as matrix products
    when its parameters are the same for every point (draws shared by all points, as on the
    grid's nodes): :math:`\sum_d x_d \ell_d - \operatorname{softplus}(\ell_d)` and
    :math:`-\tfrac12 \sum_d (x_d - \mu_d)^2 / \sigma_d^2 - \log \sigma_d - \tfrac12\log 2\pi`
    without the ``(s, n, D)`` intermediate; in float64. ``None`` where it does not apply."""
    fn, value = site["fn"], site["value"]
    if site["mask"] is not None or not torch.is_tensor(value):
        return None
    base = fn.base_dist if isinstance(fn, torch.distributions.Independent) else fn
    i = len(fn.batch_shape) + dim  # the data axis in the base's batch shape
    if i < 1 or tuple(value.shape) != (n, *base.batch_shape[i + 1 :]):
        return None
    x = value.reshape(n, -1).double()
    if type(base) in _BERNOULLI:
        key = "logits" if "logits" in base.__dict__ else "probs"
        t = _compact(getattr(base, key), i, s)
        if t is None:
            return None
        # the logits in the program's own precision, as its log_prob clamps the probabilities
        logits = (t if key == "logits" else probs_to_logits(t, is_binary=True)).double()
        return logits @ x.T - torch.nn.functional.softplus(logits).sum(-1, keepdim=True)
    if type(base) in _NORMAL:
        loc, scale = _compact(base.loc, i, s), _compact(base.scale, i, s)
        if loc is None or scale is None:
            return None
        loc, scale = loc.double(), scale.double()
        prec = scale.pow(-2)
        quad = prec @ (x * x).T - 2 * (loc * prec) @ x.T + (loc * loc * prec).sum(-1, keepdim=True)
        return -0.5 * quad - scale.log().sum(-1, keepdim=True) - 0.5 * x.shape[1] * LOG_2PI
    return None


class Program:
    """A model or guide callable with the pair's layout: runs it on draws (module docstring).

    :param fn: the Pyro program, called as ``fn(x, **kwargs)`` with ``x`` of shape
        ``(n, *x_shape)`` in the data's own dtype.
    :param dim: the ``dim`` of the program's data plate.
    :param params: tensors to hold fixed while the program runs (its parameters), so that
        gradients the analysis takes through it reach ``z`` only.
    """

    def __init__(self, fn, layout: Layout, dim: int, kwargs: dict, x_dtype, dtype, device, params=()):
        self.fn, self.layout, self.dim, self.kwargs = fn, layout, dim, dict(kwargs)
        self.x_dtype, self.dtype, self.device = x_dtype, dtype, device
        self.params = list(params)
        self.vectorized = True

    @contextlib.contextmanager
    def _fixed(self):
        """Parameters held with ``requires_grad=False`` while the program runs: the analysis
        differentiates with respect to ``z``, never the user's weights (their ``.grad`` stays
        as the user left it)."""
        flags = [p.requires_grad for p in self.params]
        try:
            for p in self.params:
                p.requires_grad_(False)
            with warnings.catch_warnings():
                # pyro.module warns for each weight it skips because requires_grad is off
                warnings.filterwarnings("ignore", message=".*was not registered in the param store")
                yield
        finally:
            for p, f in zip(self.params, flags):
                p.requires_grad_(f)

    def program_x(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(n, D)`` as the program takes it: ``(n, *x_shape)`` in the data's dtype."""
        return x.to(device=self.device, dtype=self.x_dtype).reshape(x.shape[0], *self.layout.x_shape)

    def trace(self, x: torch.Tensor, s: int, values: dict | None = None):
        """The program's trace on points ``x`` ``(n, D)`` with ``s`` draws, the latent sites
        conditioned on ``values`` ``{name: (s, n', *P)}`` (sampled when ``None``)."""
        n, lay = x.shape[0], self.layout
        xp = self.program_x(x)
        if self.vectorized:
            pad = (1,) * (lay.nesting + self.dim)
            data = {k: v.reshape(v.shape[0], *pad, *v.shape[1:]) for k, v in (values or {}).items()}
            fn = poutine.condition(self.fn, data=data) if data else self.fn
            with self._fixed(), pyro.plate(PARTICLES, s, dim=-(lay.nesting + 1)):
                return poutine.trace(fn).get_trace(xp, **self.kwargs)
        m = s * n
        xr = xp.expand(s, *xp.shape).reshape(m, *xp.shape[1:])
        data = {k: v.expand(s, n, *v.shape[2:]).reshape(m, *v.shape[2:]) for k, v in (values or {}).items()}
        fn = poutine.condition(self.fn, data=data) if data else self.fn
        with self._fixed():
            return poutine.trace(fn).get_trace(xr, **self.kwargs)

    def _per_point(self, t: torch.Tensor, s: int, n: int) -> torch.Tensor:
        """A per-site tensor over the program's batch dims as ``(s, n)``: summed over the dims
        right of the data plate (inner plates)."""
        rank = self.layout.nesting + (1 if self.vectorized else 0)
        t = torch.as_tensor(t)
        t = t.reshape(*(1,) * (rank - t.dim()), *t.shape)
        if self.dim < -1:
            t = t.sum(tuple(range(self.dim + 1, 0)))
        if self.vectorized:
            t = t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)
            return t.expand(s, n)
        return t.reshape(-1, t.shape[-1]).sum(0).expand(s * n).reshape(s, n)

    def log_prob(self, trace, s: int, n: int) -> torch.Tensor:
        """:math:`\\sum` over the trace's sample sites of their masked log-densities, ``(s, n)``."""
        total = 0.0
        latent = {site.name for site in self.layout.sites}
        for name, site in sample_sites(trace):
            if name not in latent and self.vectorized:
                shared = _shared_points(site, s, n, self.dim)
                if shared is not None:
                    total = total + shared
                    continue
            lp = site["fn"].log_prob(site["value"])
            lp = scale_and_mask(lp, site["scale"], site["mask"])
            total = total + self._per_point(lp, s, n)
        return total

    def site_values(self, trace, s: int, n: int) -> dict:
        """The latent sites' values in ``trace`` as ``{name: (s, n, *P)}``."""
        out = {}
        for site in self.layout.sites:
            v = trace.nodes[site.name]["value"]
            if self.vectorized:
                full = (s, *(1,) * (self.layout.nesting + self.dim), n, *site.shape)
                out[site.name] = torch.broadcast_to(v, full).reshape(s, n, *site.shape)
            else:
                out[site.name] = torch.broadcast_to(v, (s * n, *site.shape)).reshape(s, n, *site.shape)
        return out

    def chunk(self, n: int) -> int:
        """Draws per run so that ``(draws, points, features)`` stays within :data:`BUDGET`."""
        width = max(self.layout.data_dim, self.layout.latent_dim)
        return max(1, BUDGET // max(1, n * width))
