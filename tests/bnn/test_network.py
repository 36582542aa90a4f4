"""The BNN+LV density: log joint against a hand computation and against Pyro's trace."""

import math

import pytest
import torch
from pyro import poutine

from pyrofail.bnn.network import BNNLV
from pyrofail.errors import UsageError

LOG_2PI = math.log(2 * math.pi)


def _normal(v, m, s):
    return -0.5 * ((v - m) / s) ** 2 - math.log(s) - 0.5 * LOG_2PI


def test_log_joint_of_a_tiny_net_by_hand():
    # input (x, z) -> 2 tanh units -> 1 output; flat layout: W1 (2 x 2, row-major), b1, W2 (2 x 1), b2
    net = BNNLV(input_dim=1, hidden=(2,), noise_scale=0.5, weight_scale=2.0, latent_scale=0.7)
    w1 = [[0.3, -1.2], [0.8, 0.5]]  # rows: from x, from z
    b1 = [0.1, -0.4]
    w2 = [1.5, -0.6]
    b2 = 0.2
    w = torch.tensor([w1[0][0], w1[0][1], w1[1][0], w1[1][1], *b1, *w2, b2], dtype=torch.float64)
    xs, zs, ys = [0.5, -1.0, 2.0], [0.3, -0.8, 1.1], [0.4, 1.0, -0.7]

    def f(x, z):
        h = [math.tanh(x * w1[0][j] + z * w1[1][j] + b1[j]) for j in range(2)]
        return h[0] * w2[0] + h[1] * w2[1] + b2

    expected = sum(_normal(v, 0.0, 2.0) for v in w.tolist())
    expected += sum(_normal(z, 0.0, 0.7) for z in zs)
    expected += sum(_normal(y, f(x, z), 0.5) for x, z, y in zip(xs, zs, ys))
    x = torch.tensor(xs, dtype=torch.float64)[:, None]
    z, y = torch.tensor(zs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    assert float(net.log_joint(w, z, x, y)) == pytest.approx(expected, abs=1e-10)
    assert net.mean(w, x, z).tolist() == pytest.approx([f(a, b) for a, b in zip(xs, zs)], abs=1e-12)


def test_log_joint_equals_the_pyro_trace_and_batches_over_draws():
    net = BNNLV(input_dim=2, hidden=(5, 3), noise_scale=0.3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 2, generator=g), torch.randn(7, generator=g)
    w, z = torch.randn(4, net.num_weights, generator=g), torch.randn(4, 7, generator=g)
    batched = net.log_joint(w, z, x, y)
    for s in range(4):
        trace = poutine.trace(poutine.condition(net.model, data={"w": w[s], "z": z[s]})).get_trace(x, y)
        assert float(batched[s]) == pytest.approx(float(trace.log_prob_sum()), rel=1e-5)


def test_the_linear_network_is_linear_regression_with_input_noise():
    net = BNNLV(input_dim=2, hidden=())
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])  # a_1, a_2, c (on z), bias
    x, z = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([2.0, -4.0])
    assert net.mean(w, x, z).tolist() == pytest.approx([1 - 4 + 1 + 3, 2 - 2 + 3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden": (0,)}, "hidden=0"),
        ({"activation": "sigmoid"}, "activation"),
        ({"noise_scale": 0.0}, "noise_scale"),
        ({"latent_scale": -1.0}, "latent_scale"),
    ],
)
def test_bad_networks_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        BNNLV(**kwargs)


def test_weights_of_the_wrong_length_are_a_usage_error():
    net = BNNLV(hidden=(3,))
    with pytest.raises(UsageError, match="expected 13"):
        net.mean(torch.zeros(12), torch.zeros(2, 1), torch.zeros(2))
