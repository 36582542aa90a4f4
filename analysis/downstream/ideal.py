r"""The ideal encoder's shift under an attack: the exact posterior of the ground truth moved
from :math:`x` to :math:`x_{adv}` (re-exported by :mod:`pyrofail.analysis.downstream.attacks`).

Example:
    >>> from pyrofail.models import LinearGaussian
    >>> x = LinearGaussian().sample(2, seed=0).x
    >>> posterior_shift(LinearGaussian(), x, x)["mean"]
    0.0
"""

from __future__ import annotations

import copy

import torch

from pyrofail.analysis.downstream.pgd import _summary
from pyrofail.analysis.reference.grid import _Integrand, build_mesh
from pyrofail.errors import UsageError

__all__ = ["posterior_shift"]


@torch.no_grad()
def posterior_shift(
    truth,
    x,
    x_adv,
    *,
    tol: float = 0.5,
    radius: float = 6.0,
    boundary_tol: float = 1e-4,
    budget: int = 2**24,
) -> dict:
    r""":math:`\mathrm{KL}\big(p(z \mid x) \,\|\, p(z \mid x_{adv})\big)` of ``truth``'s exact
    posterior for every row, by quadrature (:math:`K \le 2`): the shift an ideal encoder
    suffers at the same perturbed points.

    One mesh (:func:`pyrofail.analysis.reference.grid.build_mesh`) serves both points; with the
    integrand :math:`\ell_g(x) = \log p(x, z_g) + \log w_g` and its normalisation
    :math:`\pi_g(x) = \operatorname{softmax}_g \ell_g(x)`, the node weights cancel:

    .. math::

        \mathrm{KL} \approx \sum_g \pi_g(x)\, \big[\log \pi_g(x) - \log \pi_g(x_{adv})\big].

    When either posterior puts more than ``boundary_tol`` of its mass on the outermost ring of
    the mesh, the box is widened (as in :func:`pyrofail.analysis.reference.grid.grid_posterior`).

    :returns: ``{"per_point" (N,) float64, "mean", "stderr", "boundary_mass" (N,), "mesh_info"}``.

    Example:
        >>> from pyrofail.models import LinearGaussian
        >>> truth = LinearGaussian()
        >>> x = truth.sample(2, seed=0).x
        >>> float(posterior_shift(truth, x, x)["mean"])
        0.0
    """
    k = truth.latent_dim
    if k > 2:
        raise UsageError(f"posterior_shift needs latent_dim <= 2 (exact quadrature), got {k}")
    x, x_adv = torch.as_tensor(x), torch.as_tensor(x_adv)
    if x.shape != x_adv.shape or x.dim() != 2 or x.shape[-1] != truth.data_dim:
        raise UsageError(
            f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} must both be (points, {truth.data_dim})"
        )
    work = copy.deepcopy(truth).double()
    device = work.log_noise.device if hasattr(work, "log_noise") else x.device
    x, x_adv = x.to(device, torch.float64), x_adv.to(device, torch.float64)
    while True:
        mesh = build_mesh(
            work,
            radius=radius,
            refine_radius=min(5.0, radius - 0.5),
            tol=tol,
            dtype=torch.float64,
            device=device,
        )
        integrand = _Integrand(work, mesh)
        edge = (mesh.nodes.abs().amax(-1) >= mesh.radius - mesh.info["base_width"]).double()
        chunk = max(1, budget // mesh.nodes.shape[0])
        kl, boundary = [], []
        for start in range(0, x.shape[0], chunk):
            la = integrand(x[start : start + chunk]).log_softmax(-1)
            lb = integrand(x_adv[start : start + chunk]).log_softmax(-1)
            pa = la.exp()
            kl.append((pa * (la - lb)).sum(-1).clamp_min(0.0))
            boundary.append(torch.maximum(pa @ edge, lb.exp() @ edge))
        boundary = torch.cat(boundary)
        if float(boundary.max()) <= boundary_tol or radius >= 12:
            break
        radius += 3.0
    per_point = torch.cat(kl)
    mean, se = _summary(per_point)
    return {
        "per_point": per_point,
        "mean": mean,
        "stderr": se,
        "boundary_mass": boundary,
        "mesh_info": mesh.info,
    }
