r"""The result of fitting a BNN+LV: joint draws of the weights and the training latents.

Every inference method returns the same object: ``S`` joint draws :math:`(W_s, z_{s,1..N})`
from the posterior (NUTS) or from the variational approximation (VI), the per-point latent
means :math:`\mathbb E[z_n]`, and the affine map between the user's units and the standardised
units the network works in. Predictions come back in the user's units; log densities include
the Jacobian :math:`-\log s_y` of the output's standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from pyrofail.bnn import predictive
from pyrofail.bnn.network import BNNLV
from pyrofail.errors import UsageError

__all__ = ["BNNPosterior", "Scaling"]


@dataclass(frozen=True)
class Scaling:
    r"""Affine standardisation :math:`\tilde x = (x - \mu_x)/s_x` (per column) and
    :math:`\tilde y = (y - \mu_y)/s_y`.

    Example:
        >>> st = Scaling.fit(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0, 3.0]))
        >>> st.x(torch.tensor([[2.0]])), st.y(torch.tensor([3.0]))
        (tensor([[0.7071]]), tensor([0.7071]))
    """

    x_loc: torch.Tensor
    x_scale: torch.Tensor
    y_loc: torch.Tensor
    y_scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor) -> Scaling:
        """The training data's means and standard deviations (a constant column keeps scale 1)."""
        xs, ys = x.std(0), y.std()
        return cls(
            x.mean(0),
            torch.where(xs > 0, xs, torch.ones_like(xs)),
            y.mean(),
            torch.where(ys > 0, ys, torch.ones_like(ys)),
        )

    @classmethod
    def identity(cls, input_dim: int) -> Scaling:
        """No standardisation."""
        return cls(torch.zeros(input_dim), torch.ones(input_dim), torch.zeros(()), torch.ones(()))

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_loc) / self.x_scale

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_loc) / self.y_scale

    def y_back(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_scale + self.y_loc


@dataclass
class BNNPosterior:
    """Joint draws of a fitted BNN+LV, in standardised units.

    :param network: the :class:`~pyrofail.bnn.network.BNNLV` (architecture, :math:`\\sigma`,
        :math:`s_w`, :math:`s_z`).
    :param w: weight draws ``(S, P)``.
    :param z: draws of the training latents ``(S, N)``, jointly with ``w``.
    :param z_mean: :math:`\\mathbb E[z_n]` under the posterior or the approximation, ``(N,)``.
    :param x_train: training inputs ``(N, D)``, user's units.
    :param y_train: training outputs ``(N,)``, user's units.
    :param scaling: the :class:`Scaling` from user's to standardised units.
    :param inference: the method's name.
    :param info: what the method reports (time, steps, diagnostics, chosen penalty, ...).
    """

    network: BNNLV
    w: torch.Tensor
    z: torch.Tensor
    z_mean: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    scaling: Scaling
    inference: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        s, n = self.w.shape[0], self.x_train.shape[0]
        if self.z.shape != (s, n) or self.z_mean.shape != (n,):
            raise UsageError(
                f"draws of shape w {tuple(self.w.shape)}, z {tuple(self.z.shape)}, z_mean "
                f"{tuple(self.z_mean.shape)} do not match {n} training points"
            )

    @property
    def num_draws(self) -> int:
        return self.w.shape[0]

    def thin(self, num_draws: int) -> BNNPosterior:
        """The same posterior with at most ``num_draws`` draws, evenly spaced (all if fewer)."""
        s = self.num_draws
        if num_draws >= s:
            return self
        idx = torch.linspace(0, s - 1, num_draws).round().long()
        return replace(self, w=self.w[idx], z=self.z[idx])

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.network.input_dim:
            raise UsageError(
                f"x of shape {tuple(x.shape)} is not allowed; expected (M, {self.network.input_dim})"
            )
        return self.scaling.x(x)

    def predictive(
        self, x: torch.Tensor, *, num_z: int = 10, seed: int = 0, noise: bool = True
    ) -> torch.Tensor:
        r"""Draws from the posterior predictive at inputs ``x`` ``(M, D)``, in the user's units,
        ``(S * num_z, M)``: :math:`y = f_{W_s}(x, z) + \sigma\varepsilon`, :math:`z \sim \mathcal N(0, s_z^2)`
        (see :func:`pyrofail.bnn.predictive.predictive_draws`)."""
        draws = predictive.predictive_draws(
            self.network, self.w, self._check_x(x), num_z=num_z, seed=seed, noise=noise
        )
        return self.scaling.y_back(draws)

    def predictive_summary(
        self, x: torch.Tensor, y: torch.Tensor, *, num_z: int = 100, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        r"""Per point, in the user's units: ``log_lik`` :math:`\log p(y \mid x, \mathcal D)` (latents
        from their prior), ``pit`` and ``mean`` (:func:`pyrofail.bnn.predictive.predictive_summary`)."""
        out = predictive.predictive_summary(
            self.network, self.w, self._check_x(x), self.scaling.y(y), num_z=num_z, seed=seed
        )
        out["log_lik"] = out["log_lik"] - torch.log(self.scaling.y_scale)
        out["mean"] = self.scaling.y_back(out["mean"])
        return out

    def train_log_likelihood(self) -> torch.Tensor:
        r"""Per training point, user's units:
        :math:`\log \frac1S \sum_s \mathcal N(y_n; f_{W_s}(x_n, z_{s,n}), \sigma^2)`
        with the inferred latents (:func:`pyrofail.bnn.predictive.log_likelihood_inferred`)."""
        ll = predictive.log_likelihood_inferred(
            self.network, self.w, self.z, self.scaling.x(self.x_train), self.scaling.y(self.y_train)
        )
        return ll - torch.log(self.scaling.y_scale)
