"""A BNN+LV whose network is exactly linear, so that its predictive is a known Gaussian mixture.

With ReLU units, relu(v) - relu(-v) = v: four hidden units carry x and z through unchanged, and
f_W(x, z) = a z + b x + c exactly. With z ~ N(0, s_z^2), y | x, W ~ N(b x + c, a^2 s_z^2 + sigma^2).
"""

import math

import torch

from pyrofail.bnn.network import BNNLV


def linear_net(**kwargs) -> BNNLV:
    return BNNLV(input_dim=1, hidden=(4,), activation="relu", **kwargs)


def linear_weights(a: float, b: float, c: float) -> torch.Tensor:
    """Flat weights of :func:`linear_net` computing f(x, z) = a z + b x + c."""
    w1 = [[0.0, 0.0, 1.0, -1.0], [1.0, -1.0, 0.0, 0.0]]  # rows: from x, from z
    return torch.tensor([*w1[0], *w1[1], 0.0, 0.0, 0.0, 0.0, a, -a, b, -b, c])


def mixture_log_density(y, x, draws, net: BNNLV) -> torch.Tensor:
    """log of (1/S) sum_s N(y; b_s x + c_s, a_s^2 s_z^2 + sigma^2) for draws [(a, b, c), ...]."""
    parts = []
    for a, b, c in draws:
        var = a * a * net.latent_scale**2 + net.noise_scale**2
        parts.append(-0.5 * (y - b * x - c) ** 2 / var - 0.5 * math.log(2 * math.pi * var))
    return torch.logsumexp(torch.stack(parts), 0) - math.log(len(draws))


def mixture_cdf(y, x, draws, net: BNNLV) -> torch.Tensor:
    out = 0.0
    for a, b, c in draws:
        sd = math.sqrt(a * a * net.latent_scale**2 + net.noise_scale**2)
        out = out + torch.special.ndtr((y - b * x - c) / sd)
    return out / len(draws)
