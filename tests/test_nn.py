import pytest
import torch

from pyrofail.guides import MeanFieldGuide
from pyrofail.models import LatentGaussian
from pyrofail.nn import MLP, inv_softplus, restart_finite, stack_restarts, take_restart


@pytest.mark.parametrize("shape", [(7, 3), (4, 7, 3), (5, 4, 7, 3), (2, 5, 4, 7, 3)])
def test_batched_mlp_equals_its_restarts(shape):
    mlp = MLP((3, 6, 6, 2), restarts=4)
    x = torch.randn(*shape)
    out = mlp(x)
    for r in range(4):
        xr = x if len(shape) == 2 else x[..., r, :, :]
        assert torch.allclose(out[..., r, :, :], take_restart(mlp, r)(xr), atol=1e-6)


def test_restarts_are_independently_initialised():
    mlp = MLP((2, 5, 1), restarts=3)
    w = mlp.weights[0]
    assert not torch.equal(w[0], w[1])


def test_take_and_stack_round_trip_for_model_and_guide():
    model = LatentGaussian(MLP((2, 5, 3), restarts=3), 2, 3, [0.1, 0.2, 0.3], learn_noise=True, restarts=3)
    guide = MeanFieldGuide(2, 3, hidden=(5,), restarts=3)
    for module in (model, guide):
        parts = [take_restart(module, r) for r in range(3)]
        assert all(p.restarts is None for p in parts)
        again = stack_restarts(parts)
        for a, b in zip(module.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)
    assert float(take_restart(model, 2).noise_scale.detach()) == pytest.approx(0.3)


def test_restart_finite_flags_only_the_bad_restart():
    mlp = MLP((2, 5, 1), restarts=3)
    with torch.no_grad():
        mlp.biases[1][2, 0] = float("nan")
    assert restart_finite(mlp, 3).tolist() == [True, True, False]


@pytest.mark.parametrize("y", [1e-3, 0.25, 1.0, 7.0])
def test_inv_softplus_inverts_softplus(y):
    assert torch.nn.functional.softplus(
        torch.tensor(inv_softplus(y), dtype=torch.float64)
    ).item() == pytest.approx(y, rel=1e-12)
