r"""The exact posterior :math:`p(z \mid x)` and :math:`\log p(x)` by quadrature, for :math:`K \le 2`.

.. math::

    p(x) = \int p(z)\, p(x \mid z)\, dz \approx \sum_g w_g\, p(z_g)\, p(x \mid z_g),
    \qquad p(z_g \mid x) \propto w_g\, p(z_g)\, p(x \mid z_g).

**One mesh for every data point.** For a latent-Gaussian model,
:math:`\log p(x \mid z) = -\tfrac12 \sum_d (x_d - f_d(z))^2 / \sigma_d^2 + c`, a function of
the whitened decoder :math:`f(z) \oslash \sigma` alone (one shared :math:`\sigma` or one per
feature), so the integrand is smooth on a cell exactly when the whitened decoder moves little
across it. The mesh is therefore refined where the decoder varies, not where a particular
``x`` puts its mass: starting from cells of width ``base_width`` on :math:`[-r, r]^K`, a cell
is split in :math:`2^K` while :math:`\lVert (f(z') - f(z)) \oslash \sigma \rVert` exceeds
``tol`` between its centre and a corner (with one :math:`\sigma`, a change of ``tol``
:math:`\cdot\,\sigma`). No posterior mode can be narrower than a leaf cell, so none is missed,
and :math:`f` is evaluated once per node for all ``x``; the log-likelihood of all points at all
nodes is then one matrix product of the whitened :math:`x` and :math:`f`.

Each leaf cell carries the tensor-product two-point Gauss–Legendre rule (exact for cubics
along each axis). Cells beyond ``refine_radius`` (prior mass below :math:`10^{-6}`) stay at
the base width. The result reports the posterior mass in the outermost ring of cells; when it
exceeds ``boundary_tol`` the mesh is rebuilt on a wider box.

When refinement stops before every cell meets ``tol`` (``max_levels`` or ``max_nodes``
reached), the grid warns (``UserWarning``) and reports, per point, the posterior mass in the
cells left coarse (``unresolved_mass``), which :mod:`pyrofail.analysis.reference.quality` gates on.

**Accuracy.** With the default ``tol = 0.5`` the quadrature's :math:`\log p(x)` is accurate to
about :math:`10^{-3}` nats on ``figure8``, not better: measured as the difference from a mesh
refined four times as finely (``tol = 0.125``, whose own error is smaller still) at 300 points
of the process, largest 1.1e-3 nats, median 3e-5 (``tests/analysis/test_grid.py`` holds it
under 2e-3); on linear-Gaussian models it matches the closed form to about :math:`10^{-4}`.

For a model that is not latent-Gaussian (no ``mean``/``noise_scale``: a Bernoulli
likelihood, say), a uniform mesh of width ``base_width`` is used with ``log_joint`` directly.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, field

import torch

from pyrofail.errors import UsageError

LOG_2PI = math.log(2 * math.pi)
MAX_K = 2  # the largest latent dimension the grid integrates
GL2 = 1.0 / (2.0 * math.sqrt(3.0))  # Gauss-Legendre nodes at centre +- width * GL2


@dataclass
class Mesh:
    """Quadrature nodes ``(G, K)``, their log-weights ``(G,)`` and the half-width of the
    sub-cell each node stands for ``(G,)`` (for drawing samples), plus diagnostics."""

    nodes: torch.Tensor
    log_weights: torch.Tensor
    half_width: torch.Tensor
    radius: float
    info: dict = field(default_factory=dict)
    unresolved: torch.Tensor | None = None  # (G,): nodes of cells left coarser than tol


@dataclass
class GridPosterior:
    """Per-point results of the quadrature.

    ``log_px`` ``(N,)`` is :math:`\\log p(x)`; ``mean`` ``(N, K)`` and ``cov``
    ``(N, K, K)`` are posterior moments; ``draws`` ``(N, S, K)`` are posterior samples (when
    asked for); ``region_mass`` ``(N, M)`` is the posterior mass of each requested region;
    ``boundary_mass`` ``(N,)`` the mass in the outermost ring of cells; ``unresolved_mass``
    ``(N,)`` the mass in cells that refinement left coarser than ``tol`` (too many nodes).
    """

    log_px: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    draws: torch.Tensor | None
    region_mass: torch.Tensor | None
    boundary_mass: torch.Tensor
    mesh_info: dict
    unresolved_mass: torch.Tensor | None = None


def _signs(k: int, dtype, device) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=k)), dtype=dtype, device=device)


def _base_cells(k: int, radius: float, width: float, dtype, device):
    n = max(1, math.ceil(2 * radius / width))
    width = 2 * radius / n
    axis = -radius + width * (torch.arange(n, dtype=dtype, device=device) + 0.5)
    centres = torch.cartesian_prod(*([axis] * k)).reshape(-1, k)
    return centres, width


def _is_latent_gaussian(model) -> bool:
    return hasattr(model, "mean") and hasattr(model, "noise_scale")


def feature_sigma(model, dtype, device) -> torch.Tensor:
    r""":math:`(\sigma_1, \dots, \sigma_D)` of a latent-Gaussian model (its first restart when
    batched), whether it has one shared :math:`\sigma` or one per feature."""
    sigma = torch.as_tensor(model.noise_scale)
    if getattr(model, "restarts", None) is not None:
        sigma = sigma[0]
    return sigma.to(dtype=dtype, device=device).expand(model.data_dim)


@torch.no_grad()
def build_mesh(
    model,
    *,
    radius: float = 6.0,
    refine_radius: float = 5.0,
    base_width: float = 0.1,
    tol: float = 0.5,
    max_levels: int = 14,
    max_nodes: int = 3_000_000,
    dtype=torch.float64,
    device=None,
) -> Mesh:
    """The shared quadrature mesh for ``model`` (see the module docstring).

    :param tol: largest change of :math:`f` across a leaf cell, in units of :math:`\\sigma`
        (feature by feature: the norm of the change divided by :math:`\\sigma_d`).
    :param max_nodes: refinement stops (and ``info["unresolved_cells"]`` counts the cells
        left coarse) once the mesh would exceed this many nodes.
    """
    k = model.latent_dim
    if k > MAX_K:
        raise UsageError(f"the grid reference needs latent_dim <= 2, got {k}; use method='nuts'")
    if device is None:
        device = getattr(model, "log_noise", torch.empty(0)).device
    signs = _signs(k, dtype, device)
    centres, width = _base_cells(k, radius, base_width, dtype, device)
    base_width = width
    leaves: list[tuple[torch.Tensor, float]] = []
    unresolved = 0
    levels = 0
    max_ratio = 0.0
    if _is_latent_gaussian(model):
        sigma = feature_sigma(model, dtype, device)  # (D,)
        n_leaf_nodes = 0
        while centres.shape[0]:
            corners = centres[:, None, :] + 0.5 * width * signs  # (M, 2^K, K)
            f_c = _mean_chunked(model, centres)
            f_k = _mean_chunked(model, corners.reshape(-1, k)).reshape(*corners.shape[:2], -1)
            change = ((f_k - f_c[:, None, :]) / sigma).norm(dim=-1).amax(-1)  # (M,), whitened
            near = centres.norm(dim=-1) <= refine_radius + width * math.sqrt(k) / 2
            split = (change > tol) & near
            n_split = int(split.sum())
            children = n_split * 2**k
            over = n_leaf_nodes + (centres.shape[0] - n_split + children) * 2**k > max_nodes
            if n_split == 0 or levels >= max_levels or over:
                if n_split and (levels >= max_levels or over):
                    unresolved = n_split
                keep_ratio = change[near] if near.any() else change
                max_ratio = max(max_ratio, float(keep_ratio.max()) if keep_ratio.numel() else 0.0)
                leaves.append((centres, width, split))
                break
            done = ~split
            if done.any():
                leaves.append((centres[done], width, None))
                n_leaf_nodes += int(done.sum()) * 2**k
                kept = change[done & near]
                if kept.numel():
                    max_ratio = max(max_ratio, float(kept.max()))
            centres = (centres[split][:, None, :] + 0.25 * width * signs).reshape(-1, k)
            width = width / 2
            levels += 1
    else:
        leaves.append((centres, width, None))
    nodes, log_w, half, coarse = [], [], [], []
    for c, w, left in leaves:
        left = torch.zeros(c.shape[0], dtype=torch.bool, device=c.device) if left is None else left
        coarse.append(left.repeat_interleave(2**k))
        nodes.append((c[:, None, :] + w * GL2 * signs).reshape(-1, k))
        log_w.append(torch.full((c.shape[0] * 2**k,), k * math.log(w / 2), dtype=dtype, device=c.device))
        half.append(torch.full((c.shape[0] * 2**k,), w / 4, dtype=dtype, device=c.device))
    info = {
        "nodes": int(sum(n.shape[0] for n in nodes)),
        "levels": levels,
        "tol_sigma": tol,
        "max_change_sigma": max_ratio,
        "unresolved_cells": unresolved,
        "radius": radius,
        "base_width": base_width,
    }
    return Mesh(torch.cat(nodes), torch.cat(log_w), torch.cat(half), radius, info, torch.cat(coarse))


def _mean_chunked(model, z: torch.Tensor, chunk: int = 2**18) -> torch.Tensor:
    return torch.cat([model.mean(z[i : i + chunk]) for i in range(0, z.shape[0], chunk)])


class _Integrand:
    """``log p(x_n, z_g) + log w_g`` for a chunk of points at every node, shape ``(n, G)``."""

    def __init__(self, model, mesh: Mesh):
        self.model, self.mesh = model, mesh
        z = mesh.nodes
        k = z.shape[-1]
        self.gaussian = _is_latent_gaussian(model)
        base = mesh.log_weights - 0.5 * (z * z).sum(-1) - 0.5 * k * LOG_2PI
        if self.gaussian:
            # whitened: log N(x; f, diag s^2) = -|x/s|^2/2 + (x/s).(f/s) - |f/s|^2/2 - sum log s - ...
            sigma = feature_sigma(model, z.dtype, z.device)  # (D,)
            d = model.data_dim
            self.inv_sigma = 1.0 / sigma
            self.f = _mean_chunked(model, z) * self.inv_sigma  # (G, D)
            base = base - 0.5 * (self.f * self.f).sum(-1)
            base = base - torch.log(sigma).sum() - 0.5 * d * LOG_2PI
        self.base = base

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.gaussian:
            x = x * self.inv_sigma
            return self.base + (x @ self.f.T - 0.5 * (x * x).sum(-1, keepdim=True))
        lj = self.model.log_joint(self.mesh.nodes[:, None, :], x[None, :, :])  # (G, n)
        return lj.T + self.mesh.log_weights


@torch.no_grad()
def grid_posterior(
    model,
    x: torch.Tensor,
    *,
    num_draws: int = 0,
    regions=None,
    seed: int = 0,
    radius: float = 6.0,
    tol: float = 0.5,
    base_width: float | None = None,
    max_nodes: int = 3_000_000,
    boundary_tol: float = 1e-4,
    budget: int = 2**24,
    dtype=torch.float64,
) -> GridPosterior:
    r"""Exact posterior summaries and :math:`\log p(x)` of ``model`` for every row of ``x``.

    :param num_draws: posterior draws per point (a node chosen by its posterior mass, then a
        uniform offset within the node's sub-cell).
    :param regions: callables ``nodes (G, K) -> bool (G,)``; their posterior masses are
        returned in ``region_mass`` (e.g. ``lambda z: z[:, 0] < 0`` for a mode at negative z).
    :param tol: mesh resolution, the largest change of :math:`f` across a leaf cell in units
        of :math:`\sigma` (smaller is finer; the default 0.5 gives :math:`\log p(x)` to about
        1e-3 nats on figure8: the module docstring says how that was measured).
    :param budget: number of (point, node) pairs held in memory at once.
    """
    if model.latent_dim > MAX_K:
        raise UsageError(
            f"the grid reference needs latent_dim <= 2, got {model.latent_dim}; use method='nuts'"
        )
    work = copy.deepcopy(model).to(dtype)
    x = x.to(device=work.log_noise.device if hasattr(work, "log_noise") else x.device, dtype=dtype)
    if base_width is None:
        base_width = 0.1 if _is_latent_gaussian(work) else (0.005 if model.latent_dim == 1 else 0.02)
    while True:
        mesh = build_mesh(
            work,
            radius=radius,
            refine_radius=min(5.0, radius - 0.5),
            tol=tol,
            base_width=base_width,
            max_nodes=max_nodes,
            dtype=dtype,
            device=x.device,
        )
        out = _integrate(work, mesh, x, num_draws, regions, seed, budget)
        if float(out.boundary_mass.max()) <= boundary_tol or radius >= 12:
            if mesh.info["unresolved_cells"]:
                warnings.warn(
                    f"the grid left {mesh.info['unresolved_cells']} cells unresolved (max_nodes={max_nodes}, "
                    f"max_levels reached or node budget spent); up to {float(out.unresolved_mass.max()):.3g} "
                    "of a posterior's mass lies in them (GridPosterior.unresolved_mass)",
                    UserWarning,
                    stacklevel=2,
                )
            return out
        radius += 3.0  # mass at the edge of the box: widen it and integrate again


def _integrate(model, mesh: Mesh, x, num_draws, regions, seed, budget) -> GridPosterior:
    integrand = _Integrand(model, mesh)
    z = mesh.nodes
    g, k = z.shape
    # nodes of the outermost ring of base cells: mass there means the box is too small
    edge = z.abs().amax(-1) >= mesh.radius - mesh.info["base_width"]
    zz = (z[:, :, None] * z[:, None, :]).reshape(g, k * k)
    masks = None
    if regions:
        masks = torch.stack([torch.as_tensor(r(z), dtype=z.dtype, device=z.device) for r in regions], -1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    chunk = max(1, budget // g)
    coarse = torch.zeros_like(z[:, 0]) if mesh.unresolved is None else mesh.unresolved.to(z)
    logm, mean, cov, draws, rmass, bmass, umass = [], [], [], [], [], [], []
    for start in range(0, x.shape[0], chunk):
        lj = integrand(x[start : start + chunk])  # (n, G)
        lse = torch.logsumexp(lj, -1)
        p = torch.exp(lj - lse[:, None])
        m = p @ z
        second = (p @ zz).reshape(-1, k, k)
        logm.append(lse)
        mean.append(m)
        cov.append(second - m[:, :, None] * m[:, None, :])
        bmass.append(p @ edge.to(p.dtype))
        umass.append(p @ coarse)
        if masks is not None:
            rmass.append(p @ masks)
        if num_draws:
            idx = torch.multinomial(p.float().cpu(), num_draws, replacement=True, generator=gen)
            idx = idx.to(z.device)
            u = torch.rand(*idx.shape, k, generator=gen, dtype=z.dtype).to(z.device) * 2 - 1
            draws.append(z[idx] + u * mesh.half_width[idx][..., None])
    return GridPosterior(
        log_px=torch.cat(logm),
        mean=torch.cat(mean),
        cov=torch.cat(cov),
        draws=torch.cat(draws) if num_draws else None,
        region_mass=torch.cat(rmass) if masks is not None else None,
        boundary_mass=torch.cat(bmass),
        mesh_info=mesh.info,
        unresolved_mass=torch.cat(umass),
    )
