import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_state():
    """Each test starts from a cleared parameter store and a fixed global seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)
