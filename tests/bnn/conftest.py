import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The BNNs here are tiny: one thread is faster than two, and much faster on a busy machine
    (two threads of tiny kernels spend their time waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
