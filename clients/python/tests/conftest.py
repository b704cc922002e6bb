import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the client package, without an install
sys.path.insert(0, HERE)


@pytest.fixture(scope="module")
def sidecar(request, tmp_path_factory):
    """The real sidecar jar, one per test module, with its journal in a fresh folder named after it."""
    from sidecar_fixture import start_sidecar
    sc = start_sidecar(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1])
    yield sc
    sc.stop()
