r"""The Bayesian neural network with latent input noise (BNN+LV) of Depeweg et al. (2018).

.. math::

    W \sim \mathcal N(0, s_w^2 I_P), \qquad z_n \sim \mathcal N(0, s_z^2), \qquad
    y_n = f_W(x_n, z_n) + \varepsilon_n, \quad \varepsilon_n \sim \mathcal N(0, \sigma^2),

where :math:`f_W` is a fully connected network on the concatenated input
:math:`(x_n, z_n) \in \mathbb R^{D+1}` with one scalar output, and :math:`W` is every weight and
bias as one flat vector of length :math:`P` (Depeweg, Hernández-Lobato, Doshi-Velez & Udluft,
"Decomposition of uncertainty in Bayesian deep learning for efficient and risk-sensitive
learning", ICML 2018; :math:`s_z` is their :math:`\gamma`). :math:`\sigma`, :math:`s_w` and
:math:`s_z` are fixed hyperparameters.

Weights are flat vectors so that the same code evaluates one network, a batch of posterior
draws ``(S, P)``, or a batch of NUTS proposals, with no Python loop over draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from pyrofail.errors import UsageError, check_choice, check_positive_float, check_positive_int

__all__ = ["ACTIVATIONS", "BNNLV"]

LOG_2PI = math.log(2 * math.pi)
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "softplus": torch.nn.functional.softplus}


def _normal_log_prob(v: torch.Tensor, loc, scale: float) -> torch.Tensor:
    return -0.5 * ((v - loc) / scale) ** 2 - math.log(scale) - 0.5 * LOG_2PI


@dataclass(frozen=True)
class BNNLV:
    r"""A BNN+LV: the architecture and the fixed hyperparameters; the weights are arguments.

    :param input_dim: :math:`D`, the dimension of :math:`x`.
    :param hidden: hidden layer widths, e.g. ``(50,)`` or ``(20, 20)``; ``()`` is the linear
        model :math:`f_W(x, z) = a^\top x + c z + b`, Bayesian linear regression with input noise.
    :param activation: ``"tanh"`` (smooth, which NUTS prefers), ``"relu"`` or ``"softplus"``.
    :param noise_scale: :math:`\sigma`, the output noise.
    :param weight_scale: :math:`s_w`, the prior scale of every weight and bias.
    :param latent_scale: :math:`s_z`, the prior scale of the latent input noise.

    The layout of the flat weight vector: for each layer in turn its ``(in, out)`` matrix
    (row-major), then its ``out`` biases.

    Example:
        >>> net = BNNLV(input_dim=1, hidden=(2,))
        >>> net.num_weights  # (2 * 2 + 2) + (2 * 1 + 1)
        9
        >>> w = torch.zeros(9); x = torch.ones(3, 1); z = torch.zeros(3); y = torch.zeros(3)
        >>> net.mean(w, x, z)
        tensor([0., 0., 0.])
    """

    input_dim: int = 1
    hidden: tuple[int, ...] = (50,)
    activation: str = "tanh"
    noise_scale: float = 0.1
    weight_scale: float = 1.0
    latent_scale: float = 1.0

    def __post_init__(self):
        check_positive_int("input_dim", self.input_dim)
        hidden = tuple(self.hidden) if not isinstance(self.hidden, int) else (self.hidden,)
        for width in hidden:
            check_positive_int("hidden", width)
        object.__setattr__(self, "hidden", hidden)
        check_choice("activation", self.activation, ACTIVATIONS)
        for name in ("noise_scale", "weight_scale", "latent_scale"):
            object.__setattr__(self, name, check_positive_float(name, getattr(self, name)))

    # -- weights ------------------------------------------------------------------------
    @property
    def widths(self) -> tuple[int, ...]:
        """Layer widths from input to output: ``(D + 1, *hidden, 1)``."""
        return (self.input_dim + 1, *self.hidden, 1)

    @property
    def num_weights(self) -> int:
        """:math:`P = \\sum_l (w_{l} + 1)\\, w_{l+1}` over consecutive widths."""
        w = self.widths
        return sum((a + 1) * b for a, b in zip(w[:-1], w[1:]))

    def unflatten(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(matrix (..., in, out), bias (..., out)), ...]`` from flat weights ``(..., P)``."""
        if w.shape[-1] != self.num_weights:
            raise UsageError(
                f"weights of length {w.shape[-1]} do not fit this network; expected {self.num_weights}"
            )
        layers, start = [], 0
        batch = w.shape[:-1]
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            matrix = w[..., start : start + a * b].reshape(*batch, a, b)
            start += a * b
            layers.append((matrix, w[..., start : start + b]))
            start += b
        return layers

    def initial_weights(self, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""A starting point for inference, ``(P,)``: every matrix entry
        :math:`\sim \mathcal N(0, 1/\text{fan-in})` (LeCun et al. 1998), biases 0, so that the
        starting network's hidden units neither saturate nor vanish whatever :math:`s_w` is.

        Example:
            >>> BNNLV(hidden=(3,)).initial_weights(torch.Generator().manual_seed(0)).shape
            torch.Size([13])
        """
        parts = []
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            parts += [torch.randn(a * b, generator=generator) / math.sqrt(a), torch.zeros(b)]
        return torch.cat(parts)

    # -- the process --------------------------------------------------------------------
    def mean(self, w: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`f_W(x_n, z_n)`, shape ``z.shape``.

        ``w`` is ``(*B, P)``, ``x`` is ``(N, D)`` and ``z`` is ``(*B', N)`` with ``B'`` equal
        to ``B`` or with extra leading dimensions that ``B`` broadcasts against after a
        ``unsqueeze`` by the caller (e.g. ``w[:, None]`` against ``z`` of shape ``(S, K, N)``).
        """
        h = torch.cat((x.expand(*z.shape, x.shape[-1]), z[..., None]), -1)
        layers = self.unflatten(w)
        act = ACTIVATIONS[self.activation]
        for i, (matrix, bias) in enumerate(layers):
            h = h @ matrix + bias[..., None, :]
            if i < len(layers) - 1:
                h = act(h)
        return h[..., 0]

    def log_likelihood(
        self, w: torch.Tensor, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\log \mathcal N(y_n; f_W(x_n, z_n), \sigma^2)` per point, shape ``z.shape``."""
        return _normal_log_prob(y, self.mean(w, x, z), self.noise_scale)

    def log_prior_weights(self, w: torch.Tensor) -> torch.Tensor:
        r""":math:`\log \mathcal N(W; 0, s_w^2 I_P)`, shape ``w.shape[:-1]``."""
        return _normal_log_prob(w, 0.0, self.weight_scale).sum(-1)

    def log_prior_latents(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_n \log \mathcal N(z_n; 0, s_z^2)`, shape ``z.shape[:-1]``."""
        return _normal_log_prob(z, 0.0, self.latent_scale).sum(-1)

    def log_joint(self, w: torch.Tensor, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""The log joint density of weights, latents and outputs given the inputs,

        .. math::

            \log p(W, z, y \mid x) = \log \mathcal N(W; 0, s_w^2 I)
              + \sum_n \big[\log \mathcal N(z_n; 0, s_z^2)
              + \log \mathcal N(y_n; f_W(x_n, z_n), \sigma^2)\big],

        of shape ``w.shape[:-1]`` (``w`` ``(*B, P)``, ``z`` ``(*B, N)``): the potential NUTS
        samples and the density :meth:`model` traces.

        Example:
            >>> net = BNNLV(hidden=(3,))
            >>> w, z = torch.zeros(net.num_weights), torch.zeros(2)
            >>> lj = float(net.log_joint(w, z, torch.zeros(2, 1), torch.zeros(2)))  # all at their means
            >>> abs(lj - (17 * -0.5 * math.log(2 * math.pi) + 2 * -math.log(0.1))) < 1e-4  # 13 w, 2 z, 2 y
            True
        """
        return self.log_prior_weights(w) + self.log_prior_latents(z) + self.log_likelihood(w, z, x, y).sum(-1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The Pyro model: a site ``"w"`` (event shape ``(P,)``), and ``"z"`` and ``"y"`` in the
        ``data`` plate (``dim=-1``). It vectorises over particles (``vectorize_particles``).
        Returns the mean :math:`f_W(x, z)`."""
        w = pyro.sample(
            "w", dist.Normal(x.new_zeros(()), self.weight_scale).expand([self.num_weights]).to_event(1)
        )
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), self.latent_scale))
            # batched w (particles) has batch shape (..., 1): its size-1 data-plate dimension goes
            w_batch = w if w.dim() == 1 else w.squeeze(-2)
            f = self.mean(w_batch, x, z)
            pyro.sample("y", dist.Normal(f, self.noise_scale), obs=y)
        return f
