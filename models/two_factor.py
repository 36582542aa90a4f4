r"""Two-factor zoo entries for disentanglement: each coordinate of x is a function of one factor.

.. math::

    z = (z_1, z_2) \sim \mathcal N(0, I_2), \qquad
    x \mid z \sim \mathcal N\big((g(z_1),\, g(z_2)),\ \sigma^2 I_2\big),

so the true posterior factorises, :math:`p(z \mid x) = p(z_1 \mid x_1)\, p(z_2 \mid x_2)`, and
every :math:`g` below is strictly increasing: no factor is confused with its mirror image (as
``quadratic``'s :math:`f(z) = f(-z)` is), so the exact posterior means carry each factor, one
per coordinate, and measure the disentanglement any encoder could reach
(:func:`pyrofail.analysis.mig`, :func:`pyrofail.analysis.dci`). The pair differs only in
:math:`g`: a staircase whose flat plateaus make each posterior flat over an interval (hard for
a mean-field Gaussian), and a gently warped identity whose posteriors are close to Gaussian
(the control).
"""

from __future__ import annotations

import torch
from torch import nn

from pyrofail.errors import UsageError, check_positive_float, check_positive_int
from pyrofail.models.latent_gaussian import LatentGaussian
from pyrofail.zoo import register


class Staircase(nn.Module):
    r"""Per coordinate :math:`g(z) = h \sum_{k=1}^{M-1} \operatorname{sigmoid}(\beta(z - e_k))
    - h (M-1)/2` with edges :math:`e_k = \Phi^{-1}(k/M)`, applied to every coordinate of
    ``z`` ``(..., K)``: :math:`M` plateaus at heights :math:`h` apart, each the image of an
    interval of prior mass :math:`1/M`."""

    def __init__(self, levels: int = 6, beta: float = 20.0, height: float = 1.0):
        super().__init__()
        self.levels = check_positive_int("levels", levels, minimum=2)
        self.beta = check_positive_float("beta", beta)
        self.height = check_positive_float("height", height)
        edges = torch.special.ndtri(torch.arange(1, self.levels, dtype=torch.float64) / self.levels)
        self.register_buffer("edges", edges.to(torch.get_default_dtype()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        steps = torch.sigmoid(self.beta * (z[..., None] - self.edges.to(z.dtype)))  # (..., K, M-1)
        return self.height * (steps.sum(-1) - 0.5 * (self.levels - 1))


class WarpedIdentity(nn.Module):
    r"""Per coordinate :math:`g(z) = z + a \sin(b z)` with :math:`a b < 1`, so that
    :math:`g'(z) \ge 1 - a b > 0`: smooth, strictly increasing and nearly linear on the scale of
    the posterior width."""

    def __init__(self, amplitude: float = 0.3, frequency: float = 2.0):
        super().__init__()
        self.amplitude = float(amplitude)
        self.frequency = check_positive_float("frequency", frequency)
        if not 0 <= self.amplitude * self.frequency < 1:
            raise UsageError(
                f"amplitude={amplitude!r} with frequency={frequency!r} is not allowed; expected "
                "0 <= amplitude * frequency < 1, so that g is increasing"
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.amplitude * torch.sin(self.frequency * z)


@register(
    "model",
    "two_factor_steps",
    summary="two independent factors, each through a six-level staircase: flat, box-shaped posteriors",
    failure="Cx1: every posterior is flat over a step (a box), hard for a mean-field Gaussian; "
    "the factors are identifiable only to within a step",
    keywords=("disentanglement", "two-factor", "flat-posterior", "clustered"),
    latent_dim=2,
    data_dim=2,
    noise_scale=0.15,
)
class TwoFactorSteps(LatentGaussian):
    r"""Two factors, each through a staircase of :math:`M` steps (the hard member of the pair).

    .. math::

        x_i = h \sum_{k=1}^{M-1} \operatorname{sigmoid}\big(\beta (z_i - \Phi^{-1}(k/M))\big)
              - h\,\frac{M-1}2 + \sigma \epsilon_i, \qquad i = 1, 2,

    with :math:`z \sim \mathcal N(0, I_2)`, :math:`\epsilon \sim \mathcal N(0, I_2)`,
    :math:`M = 6` levels :math:`h = 1` apart, :math:`\beta = 20`, :math:`\sigma = 0.15`,
    :math:`K = D = 2`. The data are :math:`M^2 = 36` clusters on a square lattice, each of
    prior mass :math:`1/M^2`: the two-factor analogue of ``clusters``.

    Failure mode: a noisy :math:`x_i` tells which step :math:`z_i` lies on but not where on it,
    so every posterior is (nearly) the prior restricted to a box, flat and with sharp edges,
    which no mean-field Gaussian fits (Cx1 at nearly every point). The factors stay
    identifiable: :math:`g` is strictly increasing, so the exact posterior means order the
    points along each factor, to within a step (the disentanglement ceiling of any encoder).
    """

    def __init__(self, noise_scale: float = 0.15, levels: int = 6, beta: float = 20.0, height: float = 1.0):
        super().__init__(Staircase(levels, beta, height), latent_dim=2, data_dim=2, noise_scale=noise_scale)


@register(
    "model",
    "two_factor_smooth",
    summary="two independent factors, each through a gently warped identity: near-Gaussian posteriors",
    failure="none expected (the control of two_factor_steps): posteriors close to Gaussian, "
    "the factors recoverable to within the noise",
    keywords=("disentanglement", "two-factor", "control", "near-gaussian-posterior"),
    latent_dim=2,
    data_dim=2,
    noise_scale=0.15,
)
class TwoFactorSmooth(LatentGaussian):
    r"""Two factors, each through a warped identity (the control member of the pair).

    .. math::

        x_i = z_i + a \sin(b\, z_i) + \sigma \epsilon_i, \qquad i = 1, 2,

    with :math:`z \sim \mathcal N(0, I_2)`, :math:`a = 0.3`, :math:`b = 2`
    (so :math:`g' \in [0.4, 1.6]`), :math:`\sigma = 0.15`, :math:`K = D = 2`.

    Failure mode: none expected. Each posterior is nearly Gaussian (the decoder is close to
    linear across a posterior's width :math:`\sigma / g'`), so a mean-field Gaussian encoder
    can be close to exact and the exact posterior means recover each factor to within the
    noise. It is the control for ``two_factor_steps``: same factors, same :math:`\sigma`, only
    the shape of :math:`g` differs.
    """

    def __init__(self, noise_scale: float = 0.15, amplitude: float = 0.3, frequency: float = 2.0):
        super().__init__(
            WarpedIdentity(amplitude, frequency), latent_dim=2, data_dim=2, noise_scale=noise_scale
        )
