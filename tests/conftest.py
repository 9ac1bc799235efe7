"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_intra_op_thread():
    # Tests are many small ops, often beside node subprocesses on a 2-core machine: one intra-op
    # thread avoids oversubscription stalls (a first forward took ~6 s with 2 threads, 0.2 s with 1).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
