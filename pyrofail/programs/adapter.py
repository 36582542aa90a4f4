r"""The analysis protocol for a Pyro model and guide: ``log_joint(z, x)`` and ``distribution(x)``.

The adapted model's density lives on the unconstrained :math:`z \in \mathbb R^K` (the latent
sites' blocks :math:`u_s`, concatenated; :mod:`pyrofail.programs.sites`):

.. math::

    \log p(x, z) = \sum_{\text{sites } t} \log p_t(\cdot) \Big|_{y_s = T_s(u_s)}
        + \sum_s \log\big\lvert \det \partial T_s(u_s) / \partial u_s \big\rvert ,

the model's own log-density at the mapped values (every sample site of one data point,
latent and observed) plus the change of variables, so that
:math:`\int_{\mathbb R^K} p(x, z)\, dz = p(x)` and the posterior is a density on
:math:`\mathbb R^K` (Stan's and Pyro's HMC do the same). The guide's density on the same
space is :math:`\log q(z \mid x) = \sum_s \log q_s(T_s(u_s) \mid \ldots) + \log\lvert\det J\rvert`,
so :math:`\log p(x, z) - \log q(z \mid x)` and every KL are those of the original sites (the
Jacobians cancel).

Numbers are computed in the dtype and on the device of the data the pair was adapted on (a
float32 network takes no float64 input); inputs in another dtype are cast, results come back
in the input's dtype.
"""

from __future__ import annotations

import copy

import torch
from torch.distributions import constraints

from pyrofail.programs.run import Program, align, from_sites, to_sites

__all__ = ["LatentGaussianProgram", "ProgramGuide", "ProgramModel", "ProgramPosterior"]


class _Shared(torch.nn.Module):
    """A module with no weights of its own: ``copy.deepcopy`` shares the program (the analysis
    deep-copies models before ``.double()``; the programs are never modified, and their
    numbers follow the data's dtype, see the module docstring)."""

    def __deepcopy__(self, memo):
        new = copy.copy(self)
        # buffers of its own (a noise scale) are copied: .to(dtype) on the copy must not reach them
        new._buffers = copy.deepcopy(self._buffers, memo)
        return new

    def extra_repr(self) -> str:
        sites = ", ".join(f"{s.name}{list(s.shape)}:{s.family}" for s in self.program.layout.sites)
        return f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, sites=[{sites}]"


class ProgramModel(_Shared):
    r"""A Pyro model as the analysis sees a model: ``latent_dim`` :math:`K`, ``data_dim``
    :math:`D`, ``log_joint(z, x)`` (module docstring), ``sites(z)``."""

    def __init__(self, program: Program):
        super().__init__()
        self.program = program
        self.latent_dim = program.layout.latent_dim
        self.data_dim = program.layout.data_dim

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x, z)` on the unconstrained space; ``z`` ``(..., K)`` and ``x``
        ``(..., D)`` with broadcasting leading shapes (``(S, N, K)`` against ``(N, D)`` gives
        ``(S, N)``; a grid ``(G, 1, K)`` against ``(1, N, D)`` gives ``(G, N)``)."""
        out_dtype = z.dtype
        p = self.program
        zz, xx, restore = align(z.to(device=p.device, dtype=p.dtype), x)
        s, n = zz.shape[0], xx.shape[0]
        per = p.chunk(n)
        parts = []
        for i in range(0, s, per):
            u = zz[i : i + per]
            values, ladj = to_sites(p.layout, u)
            trace = p.trace(xx, u.shape[0], values)
            parts.append(p.log_prob(trace, u.shape[0], n) + ladj)
        return restore(torch.cat(parts)).to(out_dtype)

    def sites(self, z: torch.Tensor) -> dict:
        """The latent sites' values (on their supports) for ``z`` ``(..., K)``:
        ``{name: (..., *shape)}``, to read posterior draws in the model's own terms."""
        lead = z.shape[:-1]
        values, _ = to_sites(self.program.layout, z.reshape(1, -1, z.shape[-1]))
        return {k: v.reshape(*lead, *v.shape[2:]) for k, v in values.items()}


class LatentGaussianProgram(ProgramModel):
    r"""A Pyro model found to be latent-Gaussian, :math:`z \sim \mathcal N(0, I_K)`,
    :math:`x \mid z \sim \mathcal N(f(z), \operatorname{diag}\sigma^2)` with :math:`\sigma`
    independent of :math:`z`: it also offers ``mean(z)`` :math:`= f(z)` and ``noise_scale``
    :math:`\sigma` ``(D,)``, so the grid refines its mesh where :math:`f` moves (as for the
    zoo's :class:`~pyrofail.models.latent_gaussian.LatentGaussian`)."""

    def __init__(self, program: Program, sigma: torch.Tensor, obs: str):
        super().__init__(program)
        self.register_buffer("_sigma", sigma.detach().clone())
        self.obs = obs

    @property
    def noise_scale(self) -> torch.Tensor:
        return self._sigma

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`f(z)` ``(..., D)``: the observed site's location with the latents at ``z``."""
        p = self.program
        lead = z.shape[:-1]
        zz = z.to(device=p.device, dtype=p.dtype).reshape(-1, 1, z.shape[-1])
        x0 = torch.zeros(1, self.data_dim, dtype=p.dtype, device=p.device)
        per = p.chunk(1)
        parts = []
        for i in range(0, zz.shape[0], per):
            u = zz[i : i + per]
            values, _ = to_sites(p.layout, u)
            base = _normal_base(p.trace(x0, u.shape[0], values).nodes[self.obs]["fn"])
            parts.append(base.loc.expand(base.batch_shape).reshape(u.shape[0], self.data_dim))
        return torch.cat(parts).reshape(*lead, self.data_dim).to(z.dtype)


def _normal_base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


class ProgramPosterior(torch.distributions.Distribution):
    r""":math:`q(z \mid x)` of a Pyro guide on the unconstrained :math:`\mathbb R^K`, batch
    ``(N,)``, event ``(K,)``: ``sample``/``rsample`` run the guide (one run for all draws) and
    map its sites back with :math:`T_s^{-1}`; ``log_prob`` runs it with the sites conditioned
    (module docstring)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, guide: ProgramGuide, x: torch.Tensor):
        self.guide, self.x = guide, x
        super().__init__(torch.Size(x.shape[:1]), torch.Size((guide.latent_dim,)), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.guide.reparameterized

    def rsample(self, sample_shape=()) -> torch.Tensor:
        p, x = self.guide.program, self.x
        sample_shape = torch.Size(sample_shape)
        s, n = max(1, sample_shape.numel()), x.shape[0]
        per = p.chunk(n)
        parts = []
        for i in range(0, s, per):
            m = min(per, s - i)
            trace = p.trace(x, m)
            parts.append(from_sites(p.layout, p.site_values(trace, m, n)))
        return torch.cat(parts).reshape(*sample_shape, n, -1).to(self.x.dtype)

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        p, x = self.guide.program, self.x
        n, k = x.shape[0], self.event_shape[0]
        out_dtype = value.dtype
        value = value.to(device=p.device, dtype=p.dtype)
        lead = torch.broadcast_shapes(value.shape[:-1], (n,))
        flat = value.expand(*lead, k).reshape(-1, n, k)
        per = p.chunk(n)
        parts = []
        for i in range(0, flat.shape[0], per):
            u = flat[i : i + per]
            values, ladj = to_sites(p.layout, u)
            trace = p.trace(x, u.shape[0], values)
            parts.append(p.log_prob(trace, u.shape[0], n) + ladj)
        return torch.cat(parts).reshape(lead).to(out_dtype)


class ProgramGuide(_Shared):
    """A Pyro guide as the analysis sees a guide: ``distribution(x)``, a
    :class:`ProgramPosterior` with batch ``(N,)`` and event ``(K,)``; ``mean_field`` when it
    samples one latent site on the real line from a Normal (a diagonal Gaussian)."""

    def __init__(self, program: Program, reparameterized: bool, mean_field: bool = False):
        super().__init__()
        self.program = program
        self.latent_dim = program.layout.latent_dim
        self.data_dim = program.layout.data_dim
        self.reparameterized = bool(reparameterized)
        self.mean_field = bool(mean_field)

    def distribution(self, x: torch.Tensor) -> ProgramPosterior:
        return ProgramPosterior(self, x.reshape(x.shape[0], -1))
