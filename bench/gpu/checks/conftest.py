"""Checks that need a GPU (CUDA graphs), run on the lent GPU machine, never in CI:

    source bench/gpu/sidecar-up.sh; python3 -m pytest -q -p no:cacheprovider bench/gpu/checks

They use the client package and the client tests' helpers (fake_sidecar, models) in place."""
import os
import sys

import pytest
import torch

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "clients", "python")
sys.path.insert(0, CLIENT)
sys.path.insert(0, os.path.join(CLIENT, "tests"))


@pytest.fixture(autouse=True)
def a_gpu():
    assert torch.cuda.is_available(), "these checks need a CUDA GPU: run them on the GPU machine (bench/gpu/run.sh)"
