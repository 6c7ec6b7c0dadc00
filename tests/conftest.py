"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The suite runs with one pytest worker per core: extra torch intra-op threads only thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
