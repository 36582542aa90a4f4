r"""The labelled latent-Gaussian process of the semi-supervised VAE (M2 of Kingma et al. 2014).

.. math::

    y \sim \operatorname{Cat}(\pi), \qquad z \sim \mathcal N(0, I_K), \qquad
    x \mid z, y \sim \mathcal N\big(f(z, \operatorname{onehot}(y)),\ \sigma^2 I_D\big)

(Kingma, Rezende, Mohamed & Welling 2014, "Semi-supervised learning with deep generative
models", model M2). A ground-truth process (``semicircle``) fixes :math:`f` to a known
function of ``(z, onehot(y))``; a learned M2 model uses an MLP from :math:`K + C` inputs
(:func:`m2_model`), restart-batched like :class:`~pyrofail.models.LatentGaussian`, so every
metric applies to both.

Labels are a long tensor with ``-1`` for an unlabelled point. :meth:`~LabelledLatentGaussian.log_joint`
sums :math:`y` out where it is ``-1`` (or everywhere when no labels are given):

.. math::

    \log p(x, z) = \log \sum_y \pi_y\, \mathcal N(z; 0, I)\,
        \mathcal N\big(x; f(z, y), \sigma^2 I\big),

which is the density that :func:`pyrofail.analysis.reference.grid.grid_posterior` integrates for
:math:`p(x)` and :math:`p(z \mid x)`; :meth:`~LabelledLatentGaussian.given_label` gives the
process at a fixed label, an ordinary latent-Gaussian model whose quadrature gives
:math:`p(x \mid y)` and :math:`p(z \mid x, y)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrofail.data import Dataset
from pyrofail.errors import UsageError, check_positive_float, check_positive_int
from pyrofail.labels import check_labels, one_hot
from pyrofail.models.latent_gaussian import LOG_2PI
from pyrofail.nn import ACTIVATION, MLP, Batched, data_plates

__all__ = ["LabelView", "LabelledLatentGaussian", "m2_model"]


class LabelledLatentGaussian(Batched, PyroModule):
    r"""A labelled latent-Gaussian process :math:`p(y)\, p(z)\, p(x \mid z, y)` (module docstring).

    :param decoder: a module mapping ``(..., K + C)`` (``z`` then ``onehot(y)``) to ``(..., D)``
        (with ``restarts=R``: ``(..., R, N, K + C)`` to ``(..., R, N, D)``).
    :param latent_dim: :math:`K`.
    :param data_dim: :math:`D`.
    :param num_classes: :math:`C \ge 2`.
    :param noise_scale: :math:`\sigma > 0`.
    :param class_probs: :math:`\pi` (default uniform), fixed.
    :param learn_noise: whether :math:`\log\sigma` is trained.
    :param restarts: ``None``, or ``R`` independent copies in one batched module.

    The Pyro model (:meth:`model`, ``model(x, y)``) has, inside the ``data`` plate (and the
    ``restarts`` plate when batched), the label observed where it is known and latent where it
    is ``-1``, through Pyro's ``obs_mask``: sites ``"y_observed"`` (masked to the labelled
    points) and ``"y_unobserved"`` (masked to the unlabelled ones; a guide enumerates it),
    joined in the deterministic site ``"y"``; then ``"z"`` and ``"x"``.

    Example:
        >>> import torch
        >>> from pyrofail.models.m2 import m2_model
        >>> model = m2_model(latent_dim=1, data_dim=2, hidden=(8,), noise_scale=0.05)
        >>> z, x = torch.zeros(3, 1), torch.zeros(3, 2)
        >>> model.log_joint(z, x, torch.tensor([0, 1, -1])).shape
        torch.Size([3])
    """

    def __init__(
        self,
        decoder: nn.Module,
        latent_dim: int,
        data_dim: int,
        num_classes: int = 2,
        noise_scale=1.0,
        *,
        class_probs: Sequence[float] | None = None,
        learn_noise: bool = False,
        restarts: int | None = None,
    ):
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.data_dim = check_positive_int("data_dim", data_dim)
        self.num_classes = check_positive_int("num_classes", num_classes, minimum=2)
        self.restarts = restarts
        self.decoder = decoder
        noise = torch.as_tensor(noise_scale, dtype=torch.get_default_dtype())
        if noise.numel() == 1:
            check_positive_float("noise_scale", float(noise))
        elif not bool((noise > 0).all()):
            raise UsageError(f"noise_scale={noise.tolist()} is not allowed; expected values > 0")
        log_noise = noise.log().expand(self.batch_shape).clone()
        if learn_noise:
            self.log_noise = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise", log_noise)
        if class_probs is None:
            probs = torch.full((self.num_classes,), 1.0 / self.num_classes)
        else:
            probs = torch.as_tensor(class_probs, dtype=torch.get_default_dtype())
            if probs.shape != (self.num_classes,) or not bool((probs > 0).all()):
                raise UsageError(
                    f"class_probs={probs.tolist()} is not allowed; expected {self.num_classes} "
                    "positive numbers"
                )
            probs = probs / probs.sum()
        # the restart dimension on every own tensor, so that take_restart/stack_restarts work
        self.register_buffer("log_class_probs", probs.log().expand(*self.batch_shape, -1).clone())

    # -- the process --------------------------------------------------------------------
    @property
    def noise_scale(self) -> torch.Tensor:
        """The current :math:`\\sigma` (detached), of shape ``()`` or ``(R,)``."""
        return self.log_noise.detach().exp()

    def _log_sigma(self) -> torch.Tensor:
        s = self.log_noise
        return s if self.restarts is None else s.reshape(-1, 1, 1)

    def curve(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""The class curve :math:`f(z, y)`: ``z`` ``(..., K)`` and long labels ``y`` (``...``)
        broadcast against each other (a label tensor ``(C, 1, ..., 1)`` gives every class)."""
        lead = torch.broadcast_shapes(z.shape[:-1], y.shape)
        code = one_hot(y, self.num_classes, z.dtype)
        h = torch.cat((z.expand(*lead, z.shape[-1]), code.expand(*lead, self.num_classes)), -1)
        return self.decoder(h)

    def prior(self) -> dist.Distribution:
        """:math:`p(z) = \\mathcal N(0, I_K)` with event shape ``(K,)``."""
        zero = self.log_noise.new_zeros(self.latent_dim)
        return dist.Normal(zero, 1.0).to_event(1)

    def label_prior(self) -> dist.Distribution:
        """:math:`p(y) = \\operatorname{Cat}(\\pi)`, batch shape ``()`` or ``(R, 1)``."""
        logits = self.log_class_probs
        return dist.Categorical(logits=logits if self.restarts is None else logits.unsqueeze(-2))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """:math:`p(x \\mid z, y) = \\mathcal N(f(z, y), \\sigma^2 I_D)`, event shape ``(D,)``."""
        return dist.Normal(self.curve(z, y), self._log_sigma().exp()).to_event(1)

    def model(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, n: int | None = None):
        """The Pyro model, ``model(x, y)`` (see the class docstring). With ``x=None`` and
        ``y=None``, ``n`` points from the prior predictive (a plain latent site ``"y"``).
        Returns ``(z, y)``."""
        return self(x, y, n)

    def forward(self, x=None, y=None, n=None):
        if x is None and n is None:
            raise UsageError("model() needs observed x or a number of points n")
        n = x.shape[-2] if x is not None else n
        y = check_labels(y, n, self.num_classes)
        with data_plates(n, self.restarts):
            if x is None and y is None:
                label = pyro.sample("y", self.label_prior())
            else:
                known = torch.zeros(n, dtype=torch.bool) if y is None else y >= 0
                obs = torch.zeros(n, dtype=torch.long) if y is None else y.clamp(min=0)
                device = self.log_noise.device
                label = pyro.sample("y", self.label_prior(), obs=obs.to(device), obs_mask=known.to(device))
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z, label), obs=x)
        return z, label

    def _log_class_probs_for(self, ndim: int) -> torch.Tensor:
        """:math:`\\log \\pi_c` shaped ``(C, 1, ..., 1)`` (``ndim`` dims in all), or
        ``(C, 1, ..., R, 1)`` when batched, to broadcast against ``(C, ..., [R,] N)``."""
        lp = self.log_class_probs
        if self.restarts is None:
            return lp.reshape(-1, *([1] * (ndim - 1)))
        return lp.T.reshape(self.num_classes, *([1] * (ndim - 3)), self.restarts, 1)

    def log_joint_per_class(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x, y = c, z)` for every class, shape ``(C, ...)``, where ``...`` is the
        broadcast of ``z`` ``(..., K)`` and ``x`` ``(..., D)`` without the last dimension."""
        c = self.num_classes
        lead = torch.broadcast_shapes(z.shape[:-1], x.shape[:-1])
        labels = torch.arange(c, device=z.device).reshape(c, *([1] * len(lead)))
        log_sigma = self._log_sigma()
        resid = (x - self.curve(z.unsqueeze(0), labels)) * torch.exp(-log_sigma)
        d, k = self.data_dim, self.latent_dim
        log_lik = -0.5 * (resid * resid).sum(-1) - d * log_sigma.squeeze(-1) - 0.5 * d * LOG_2PI
        log_prior = -0.5 * (z * z).sum(-1) - 0.5 * k * LOG_2PI
        return self._log_class_probs_for(log_lik.dim()) + log_prior + log_lik

    def log_joint(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`\log p(x, y, z)` where the label is known and :math:`\log \sum_y p(x, y, z)`
        where it is ``-1`` or not given. Shapes broadcast as in
        :meth:`pyrofail.models.LatentGaussian.log_joint` (``y`` against the batch shape), so a
        grid ``(G, 1, K)`` against data ``(N, D)`` gives ``(G, N)``."""
        per_class = self.log_joint_per_class(z, x)
        summed = torch.logsumexp(per_class, 0)
        if y is None:
            return summed
        y = torch.as_tensor(y, device=per_class.device).long().expand(summed.shape)
        known = per_class.gather(0, y.clamp(min=0).unsqueeze(0)).squeeze(0)
        return torch.where(y >= 0, known, summed)

    def given_label(self, y: int) -> LabelView:
        """The process at a fixed label: a :class:`LabelView` (for quadrature of
        :math:`p(x \\mid y)` and :math:`p(z \\mid x, y)`)."""
        return LabelView(self, y)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` points ``(x, z, y)`` from the process with a private generator: the same seed
        gives the same data on CPU whatever the global random state."""
        n = check_positive_int("n", n)
        if self.restarts is not None:
            raise UsageError("sample() needs an un-batched model; use take_restart first")
        g = torch.Generator().manual_seed(int(seed))
        dtype = self.log_noise.dtype
        y = torch.multinomial(self.log_class_probs.exp().cpu().to(dtype), n, replacement=True, generator=g)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=dtype)
        eps = torch.randn(n, self.data_dim, generator=g, dtype=dtype)
        device = self.log_noise.device
        y, z = y.to(device), z.to(device)
        x = self.curve(z, y) + self.noise_scale * eps.to(device)
        return Dataset(x=x, z=z, y=y)

    def extra_repr(self) -> str:
        sigma = self.noise_scale
        sigma = f"{float(sigma):.4g}" if sigma.numel() == 1 else "per restart"
        return (
            f"latent_dim={self.latent_dim}, data_dim={self.data_dim}, num_classes={self.num_classes}, "
            f"noise_scale={sigma}, restarts={self.restarts}"
        )


class LabelView(nn.Module):
    r"""A :class:`LabelledLatentGaussian` at a fixed label :math:`y`: the latent-Gaussian model
    :math:`p(z)\, p(x \mid z, y)`, with ``mean(z)`` :math:`= f(z, y)`, ``noise_scale`` and
    ``log_joint(z, x)`` :math:`= \log p(z) + \log p(x \mid z, y)` (no :math:`\log p(y)`), so
    that :func:`pyrofail.analysis.reference.grid.grid_posterior` gives :math:`\log p(x \mid y)` and
    :math:`p(z \mid x, y)` on its mesh refined along the decoder.

    Example:
        >>> import torch
        >>> from pyrofail.models.m2 import m2_model
        >>> view = m2_model(1, 2, hidden=(8,), noise_scale=0.1).given_label(1)
        >>> view.mean(torch.zeros(4, 1)).shape
        torch.Size([4, 2])
    """

    def __init__(self, process: LabelledLatentGaussian, y: int):
        super().__init__()
        if process.restarts is not None:
            raise UsageError("given_label() needs an un-batched model; use take_restart first")
        if not 0 <= int(y) < process.num_classes:
            raise UsageError(f"label {y} is not allowed; expected a class in 0..{process.num_classes - 1}")
        self.process = process
        self.label = int(y)
        self.latent_dim, self.data_dim = process.latent_dim, process.data_dim
        self.restarts = None

    @property
    def noise_scale(self) -> torch.Tensor:
        return self.process.noise_scale

    @property
    def log_noise(self) -> torch.Tensor:
        return self.process.log_noise

    def _labels(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full(z.shape[:-1], self.label, dtype=torch.long, device=z.device)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`f(z, y)`."""
        return self.process.curve(z, self._labels(z))

    def log_joint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(z) + \\log p(x \\mid z, y)`, broadcasting like the parent's."""
        per_class = self.process.log_joint_per_class(z, x)[self.label]
        return per_class - self.process.log_class_probs[self.label]


def m2_model(
    latent_dim: int,
    data_dim: int,
    num_classes: int = 2,
    *,
    hidden: Sequence[int] = (50, 50, 50),
    activation: str = ACTIVATION,
    noise_scale: float = 1.0,
    class_probs: Sequence[float] | None = None,
    learn_noise: bool = False,
    restarts: int | None = None,
) -> LabelledLatentGaussian:
    r"""The learned M2 model: :class:`LabelledLatentGaussian` with the decoder
    :math:`f_\theta(z, \operatorname{onehot}(y))` an :class:`~pyrofail.nn.MLP` from
    :math:`K + C` inputs (Kingma et al. 2014), :math:`\sigma` fixed by default (pass the
    truth's), ``restarts=R`` for ``R`` independent copies in one batched module.

    Example:
        >>> from pyrofail.models.m2 import m2_model
        >>> m2_model(1, 2, hidden=(8,), noise_scale=0.05, restarts=3).decoder.sizes
        (3, 8, 2)
    """
    decoder = MLP((latent_dim + num_classes, *hidden, data_dim), activation, restarts=restarts)
    return LabelledLatentGaussian(
        decoder,
        latent_dim,
        data_dim,
        num_classes,
        noise_scale,
        class_probs=class_probs,
        learn_noise=learn_noise,
        restarts=restarts,
    )
